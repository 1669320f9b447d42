package vfs

import (
	"reflect"
	"testing"

	"github.com/nimbus-fs/nimbus/journal"
)

func TestChangesSame(t *testing.T) {
	tests := []struct {
		name string
		do   func(c *changes)
		size int64
		want []journal.Range
	}{
		{"untouched", func(c *changes) {}, 100, []journal.Range{rg(0, 100)}},
		{"one write in the middle", func(c *changes) { c.write(40, 1) }, 100, []journal.Range{rg(0, 40), rg(41, 59)}},
		{"writes merge", func(c *changes) { c.write(10, 5); c.write(20, 5); c.write(15, 5) }, 100, []journal.Range{rg(0, 10), rg(25, 75)}},
		{"overlapping writes", func(c *changes) { c.write(50, 10); c.write(5, 50) }, 100, []journal.Range{rg(0, 5), rg(60, 40)}},
		{"append past the base", func(c *changes) { c.write(100, 20) }, 120, []journal.Range{rg(0, 100)}},
		{"truncate down and up", func(c *changes) { c.truncate(30); c.write(50, 1) }, 100, []journal.Range{rg(0, 30)}},
		{"shrunk copy", func(c *changes) {}, 60, []journal.Range{rg(0, 60)}},
		{"all written", func(c *changes) { c.write(0, 100) }, 100, nil},
		{"forgotten", func(c *changes) { c.write(1, 1); c.forget(); c.write(5, 1) }, 100, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := copiedFrom(100)
			tt.do(&c)
			if got := c.same(tt.size); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("same(%d) = %v, want %v", tt.size, got, tt.want)
			}
		})
	}
}

func TestChangesManyWritesGiveUp(t *testing.T) {
	c := copiedFrom(1 << 30)
	for i := range maxTouched + 1 {
		c.write(int64(i)*10, 1)
	}
	if c.known || c.same(1<<30) != nil {
		t.Fatalf("tracking %d scattered writes: still known", maxTouched+1)
	}
	c = copiedFrom(1 << 30)
	for i := range 3 * maxTouched { // sequential writes stay one range
		c.write(int64(i)*4096, 4096)
	}
	if got := c.same(1 << 30); len(got) != 1 || got[0].Off != 3*maxTouched*4096 {
		t.Fatalf("sequential writes: same = %v", got)
	}
}

func TestChangesDelta(t *testing.T) {
	c := copiedFrom(10)
	if d := c.delta(journal.Base{}, 10); d != nil {
		t.Errorf("delta of a new file = %v, want nil", d)
	}
	d := c.delta(journal.Base{Exists: true, ETag: "e1"}, 10)
	if d == nil || d.SrcETag != "e1" || !reflect.DeepEqual(d.Same, []journal.Range{{Off: 0, Len: 10}}) {
		t.Errorf("delta = %+v", d)
	}
	var unknown changes
	if d := unknown.delta(journal.Base{Exists: true, ETag: "e1"}, 10); d != nil {
		t.Errorf("delta of an untracked copy = %v, want nil", d)
	}
}

func rg(off, n int64) journal.Range { return journal.Range{Off: off, Len: n} }
