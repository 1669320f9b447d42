package s3

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/config"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/middleware"
)

// Where a custom endpoint came from, for messages.
const (
	EndpointFromFlag = "--endpoint"
)

// configuredEndpoint returns the S3 endpoint the AWS configuration sets,
// and where it was set, or "" for AWS S3 itself. The SDK resolves it: the
// environment (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL), then endpoint_url in
// the profile's s3 services section or in the profile itself, unless
// AWS_IGNORE_CONFIGURED_ENDPOINT_URLS is set. A client built from awsCfg
// holds the result in BaseEndpoint; the source is found by comparing.
func configuredEndpoint(awsCfg aws.Config) (endpoint, source string) {
	client := awss3.NewFromConfig(awsCfg)
	base := client.Options().BaseEndpoint
	if base == nil || *base == "" {
		return "", ""
	}
	endpoint = *base
	for _, env := range []string{"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"} {
		if os.Getenv(env) == endpoint {
			return endpoint, env
		}
	}
	file := os.Getenv("AWS_CONFIG_FILE")
	if file == "" {
		file = "~/.aws/config"
	}
	for _, src := range awsCfg.ConfigSources {
		sc, ok := src.(config.SharedConfig)
		if !ok {
			continue
		}
		if sc.BaseEndpoint == endpoint {
			return endpoint, fmt.Sprintf("endpoint_url in profile %s of %s", sc.Profile, file)
		}
		if sc.ServicesSectionName != "" {
			return endpoint, fmt.Sprintf("endpoint_url in section services %s (profile %s) of %s", sc.ServicesSectionName, sc.Profile, file)
		}
	}
	return endpoint, "the AWS configuration"
}

// checkEndpoint checks that endpoint is an http:// or https:// URL; source
// says where it was set.
func checkEndpoint(endpoint, source string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("s3: endpoint %q (%s) is not an http:// or https:// URL", endpoint, source)
	}
	if u.User != nil {
		// It would show in logs and messages: credentials go elsewhere.
		return "", fmt.Errorf("s3: endpoint %q (%s) holds a user name or password: give credentials with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile", u.Redacted(), source)
	}
	return strings.TrimRight(endpoint, "/"), nil
}

// loopbackEndpoint reports whether endpoint, a checked endpoint URL, names
// this machine: localhost, or a literal loopback address. A name is not
// resolved: what it resolves to may change.
func loopbackEndpoint(endpoint string) bool {
	u, err := url.Parse(endpoint)
	if err != nil {
		return false
	}
	host := u.Hostname()
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// UnsignedPayload is an API option of an S3 client: a request carries its
// body unsigned (UNSIGNED-PAYLOAD) rather than signed with its SHA-256, as
// the SDK already sends it over TLS. Operations without a payload hash step
// (a presigned request) are left alone. A Store uses it for a loopback
// endpoint; the benchmark's raw client, to upload as nimbus does.
func UnsignedPayload(stack *middleware.Stack) error {
	if _, ok := stack.Finalize.Get((*v4.ComputePayloadSHA256)(nil).ID()); !ok {
		return nil
	}
	return v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware(stack)
}
