package integration

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
)

// pattern is deterministic, seekable test content: the 8-byte word at index
// w is splitmix64(seed+w). Any range can be regenerated without storing it,
// so a 1 GiB object can be checked byte for byte.
type pattern struct {
	seed uint64
	size int64
}

func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// ReadAt fills p with the bytes at off.
func (p pattern) ReadAt(b []byte, off int64) (int, error) {
	if off >= p.size {
		return 0, io.EOF
	}
	n := len(b)
	if rest := p.size - off; int64(n) > rest {
		n = int(rest)
	}
	var word [8]byte
	for i := 0; i < n; {
		pos := off + int64(i)
		w := uint64(pos / 8)
		binary.LittleEndian.PutUint64(word[:], splitmix64(p.seed+w))
		i += copy(b[i:n], word[pos%8:])
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

func (p pattern) bytes(off, n int64) []byte {
	b := make([]byte, n)
	m, err := p.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		panic(err)
	}
	return b[:m]
}

// sha256 of the whole content.
func (p pattern) sha256() [32]byte {
	h := sha256.New()
	if _, err := io.Copy(h, p.reader()); err != nil {
		panic(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

func (p pattern) reader() io.ReadSeeker { return io.NewSectionReader(p, 0, p.size) }

// shaOf is the sha256 of b, in the form pattern.sha256 returns.
func (pattern) shaOf(b []byte) [32]byte { return sha256.Sum256(b) }
