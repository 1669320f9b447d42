package vfs

import "testing"

// TestInodeBudgetOrder checks that the budget hands out directories
// least recently used first, and forgets the ones the kernel forgot.
func TestInodeBudgetOrder(t *testing.T) {
	var b inodeBudget
	a, c, d := &dirNode{}, &dirNode{}, &dirNode{}
	b.touch(a)
	b.touch(c)
	b.touch(d)
	b.touch(a) // a is now the most recent
	b.drop(d)  // the kernel forgot d
	b.drop(d)  // twice is harmless
	for i, want := range []*dirNode{c, a, nil} {
		if got := b.coldest(); got != want {
			t.Fatalf("coldest #%d = %p, want %p", i, got, want)
		}
	}
}
