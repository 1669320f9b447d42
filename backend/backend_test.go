package backend

import (
	"errors"
	"fmt"
	"testing"
)

func TestEachWithin(t *testing.T) {
	ranges := []Range{{Off: 0, Len: 10}, {Off: 20, Len: 5}, {Off: 30, Len: 10}}
	for _, c := range []struct {
		off, end int64
		want     string
	}{
		{0, 100, "[{0 10} {20 5} {30 10}]"},
		{5, 22, "[{5 5} {20 2}]"},
		{10, 20, "[]"},
		{24, 31, "[{24 1} {30 1}]"},
		{40, 50, "[]"},
	} {
		var got []Range
		if err := EachWithin(ranges, c.off, c.end, func(r Range) error { got = append(got, r); return nil }); err != nil {
			t.Fatal(err)
		}
		if s := fmt.Sprint(got); s != c.want && !(c.want == "[]" && got == nil) {
			t.Errorf("EachWithin(%d, %d) = %s, want %s", c.off, c.end, s, c.want)
		}
	}
	stop := errors.New("stop")
	n := 0
	if err := EachWithin(ranges, 0, 100, func(Range) error { n++; return stop }); err != stop || n != 1 {
		t.Errorf("EachWithin with a failing fn = %v after %d calls; want its error after 1", err, n)
	}
}
