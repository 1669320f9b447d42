package journal

import (
	"context"
	"testing"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/faulty"
)

// A superseded upload of this machine may have reached the store; finding
// it there is not a conflict. But another machine storing the same bytes
// is not that upload: its file must keep the name, and ours go to a
// conflicted copy. By content alone the two look alike, and the other
// machine's file was overwritten.
func TestPriorRecognisedByTokenNotContent(t *testing.T) {
	r := newRemote(t)
	laptop := newMachine(t, r.root, "laptop")
	laptop.put("x.txt", "hello", Base{})
	// A restart: the first version may have been sent before it.
	laptop.kill()
	laptop.open()
	laptop.put("x.txt", "bye", Base{}) // supersedes "hello"
	// Meanwhile the desktop, another nimbus, created x.txt with the same
	// first bytes.
	r.put("x.txt", "hello", backend.Cond{IfNoneMatch: true}, map[string]string{shaMeta: shaOf("hello")})

	laptop.run()
	laptop.waitIdle()
	r.assertFiles(map[string]string{
		"x.txt":                             "hello",
		conflictName("x.txt", "laptop", t0): "bye",
	})
}

// Our own superseded upload, found on the store, is replaced without a
// conflict: it carries our token.
func TestPriorOwnUploadReplaced(t *testing.T) {
	r := newRemote(t)
	laptop := newMachine(t, r.root, "laptop")
	laptop.put("x.txt", "hello", Base{})
	tok := laptop.j.entries[1].rec.Token
	if tok == "" {
		t.Fatal("a PutFile record has no upload token")
	}
	laptop.kill()
	laptop.open()
	laptop.put("x.txt", "bye", Base{})
	// The first attempt did land before the restart.
	r.put("x.txt", "hello", backend.Cond{IfNoneMatch: true}, map[string]string{shaMeta: shaOf("hello"), tokenMeta: tok})

	laptop.run()
	laptop.waitIdle()
	r.assertFiles(map[string]string{"x.txt": "bye"})
	if c := laptop.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v, want none", c)
	}
}

// Replay after a lost answer: the store has our upload (our token), even
// though the content is also what another machine might write.
func TestReplayFindsOwnUploadByToken(t *testing.T) {
	r := newRemote(t)
	laptop := newMachine(t, r.root, "laptop")
	laptop.put("x.txt", "same bytes", Base{})
	rec := laptop.j.entries[1].rec
	info := r.put("x.txt", "same bytes", backend.Cond{IfNoneMatch: true}, map[string]string{shaMeta: rec.SHA256, tokenMeta: rec.Token})
	laptop.run()
	laptop.waitIdle()
	r.assertFiles(map[string]string{"x.txt": "same bytes"})
	res := laptop.resultList()
	if len(res) != 1 || res[0].Conflict != nil || res[0].Info.ETag != info.ETag {
		t.Errorf("results = %+v, want the stored object %s, no conflict", res, info.ETag)
	}
}

// Two machines create the same empty file: no conflict (the remote holds
// exactly those bytes). Their next writes are both conditioned on that
// version, so the second to land conflicts and is kept: nothing is lost.
func TestEmptyCreatesRace(t *testing.T) {
	r := newRemote(t)
	laptop := newMachine(t, r.root, "laptop")
	desktop := newMachine(t, r.root, "desktop")
	laptop.put("race.txt", "", Base{})
	desktop.put("race.txt", "", Base{})
	laptop.run()
	laptop.waitIdle()
	desktop.run()
	desktop.waitIdle()
	if c := append(laptop.j.Conflicts(), desktop.j.Conflicts()...); len(c) != 0 {
		t.Fatalf("conflicts = %+v: an empty file racing an empty file is no conflict", c)
	}
	laptop.put("race.txt", "A\n", Base{Exists: true, ETag: laptop.resultList()[0].Info.ETag})
	desktop.put("race.txt", "B\n", Base{Exists: true, ETag: desktop.resultList()[0].Info.ETag})
	laptop.waitIdle()
	desktop.waitIdle()
	lost, won := loser(t, laptop, desktop)
	want := map[*machine]string{laptop: "A\n", desktop: "B\n"}
	r.assertFiles(map[string]string{
		"race.txt":                              want[won],
		conflictName("race.txt", lost.host, t0): want[lost],
	})
}

// An empty new file whose name another machine took meanwhile makes no
// (empty) conflicted copy, and the write that follows it here, still
// pending, conflicts instead of overwriting the other machine's file.
func TestEmptyCreateGivesWay(t *testing.T) {
	r := newRemote(t)
	desktop := newMachine(t, r.root, "desktop")
	desktop.put("race.txt", "", Base{})
	r.put("race.txt", "A\n", backend.Cond{IfNoneMatch: true}, nil)
	gate := newGate()
	desktop.hooks.setHooks(func(ctx context.Context, c call) error {
		if c.Op == faulty.OpPut && c.Key == "race.txt" {
			return gate.hold(ctx, c)
		}
		return nil
	}, nil)
	desktop.run()
	gate.wait(t) // the empty file is being uploaded: the next write chains
	desktop.put("race.txt", "B\n", Base{Exists: true, ETag: "ignored while chained"})
	gate.release()
	desktop.waitIdle()
	r.assertFiles(map[string]string{
		"race.txt":                              "A\n",
		conflictName("race.txt", "desktop", t0): "B\n",
	})
}
