package journal

import (
	"encoding/json"
	"fmt"
	"strings"

	"go.etcd.io/bbolt"
)

// A conflict stays listed until its conflicted copy no longer exists under
// its name, or until the user clears it (nimbus conflicts --clear). The
// first is seen here for the changes made through this mount: a committed
// delete of the copy, or a move of the folder holding it (a file rename is
// a copy and a delete of its source). The vfs reports copies deleted
// elsewhere through ClearConflicts.

// copiesGoneLocked returns the conflicted copies that ops delete or move
// away. Called with j.mu held.
func (j *Journal) copiesGoneLocked(ops []preparedOp) map[string]bool {
	if len(j.copies) == 0 {
		return nil
	}
	gone := map[string]bool{}
	for _, p := range ops {
		switch op := p.Op; op.Kind {
		case Delete:
			if j.copies[op.Key] {
				gone[op.Key] = true
			}
		case MoveTree:
			for k := range j.copies {
				if strings.HasPrefix(k, op.Src) {
					gone[k] = true
				}
			}
		}
	}
	return gone
}

// deleteConflictsTx removes the conflict records that match, and returns
// them.
func deleteConflictsTx(tx *bbolt.Tx, match func(Conflict) bool) ([]Conflict, error) {
	b := tx.Bucket(conflictsBucket)
	var keys [][]byte
	var out []Conflict
	err := b.ForEach(func(k, v []byte) error {
		var c Conflict
		if err := json.Unmarshal(v, &c); err != nil {
			return fmt.Errorf("decode conflict record %x: %w", k, err)
		}
		if match(c) {
			keys = append(keys, append([]byte(nil), k...))
			out = append(out, c)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return nil, fmt.Errorf("delete conflict record: %w", err)
		}
	}
	return out, nil
}

// forgetConflictsLocked updates the in-memory count and copies after the
// records of cleared were deleted. Called with j.mu held.
func (j *Journal) forgetConflictsLocked(cleared []Conflict) {
	j.conflicts -= len(cleared)
	if j.conflicts < 0 {
		j.conflicts = 0
	}
	for _, c := range cleared {
		if c.ConflictKey != "" {
			delete(j.copies, c.ConflictKey)
		}
	}
	if len(cleared) > 0 {
		j.notifyLocked()
	}
}

// ClearConflicts removes from the list the conflicts whose key or
// conflicted copy is one of keys (every conflict when keys is empty), and
// returns them. The files are not touched.
func (j *Journal) ClearConflicts(keys ...string) ([]Conflict, error) {
	want := make(map[string]bool, len(keys))
	for _, k := range keys {
		want[k] = true
	}
	match := func(c Conflict) bool {
		return len(keys) == 0 || want[c.Key] || (c.ConflictKey != "" && want[c.ConflictKey])
	}
	j.writeMu.Lock()
	defer j.writeMu.Unlock()
	var cleared []Conflict
	err := j.db.Update(func(tx *bbolt.Tx) error {
		var err error
		cleared, err = deleteConflictsTx(tx, match)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("journal: clear conflicts: %w", err)
	}
	j.mu.Lock()
	j.forgetConflictsLocked(cleared)
	j.mu.Unlock()
	for _, c := range cleared {
		j.log.Info("conflict cleared", "key", c.Key, "copy", c.ConflictKey)
	}
	return cleared, nil
}
