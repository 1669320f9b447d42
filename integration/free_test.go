package integration

import (
	"strings"
	"testing"
	"time"
)

// TestFreeRefusesPinned (issue 11, point 10): nimbus free on a pinned
// folder, or on a folder holding one, refuses and says how to go on,
// keeping the pin and its content; free --unpin unpins, then frees.
func TestFreeRefusesPinned(t *testing.T) {
	e := newEnv(t)
	e.put("d/pinned/a.bin", make([]byte, 256<<10))
	e.put("d/other.bin", make([]byte, 64<<10))
	m := e.mount(mountOpt{})
	if out, err := nimbusCmd(t, time.Minute, "pin", m.path("d/pinned")); err != nil {
		t.Fatalf("nimbus pin: %v\n%s", err, out)
	}
	for _, p := range []string{"d/pinned", "d", ""} {
		out, code := cliRun(t, time.Minute, nil, "free", m.path(p))
		if code != 1 || !strings.Contains(out, "/d/pinned is pinned") || !strings.Contains(out, "--unpin") {
			t.Errorf("free %q of a pinned path: exit %d, want 1 and a hint: %s", p, code, out)
		}
	}
	if s := xattr(t, m.path("d/pinned/a.bin"), "user.nimbus.state"); s != "pinned" {
		t.Errorf("state after a refused free = %q, want pinned", s)
	}
	out, code := cliRun(t, time.Minute, nil, "free", "--unpin", m.path("d"))
	if code != 0 || !strings.Contains(out, "unpinned 1 path(s) and freed") {
		t.Fatalf("free --unpin: exit %d: %s", code, out)
	}
	if st := m.status(); len(st.Pins) != 0 || st.Cache.Pinned != 0 {
		t.Errorf("after free --unpin: pins %+v, %d pinned bytes", st.Pins, st.Cache.Pinned)
	}
	if s := xattr(t, m.path("d/pinned/a.bin"), "user.nimbus.state"); s != "online" {
		t.Errorf("state after free --unpin = %q, want online", s)
	}
}
