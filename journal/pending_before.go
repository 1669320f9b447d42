package journal

// PendingBefore returns the newest pending op whose Key is key among those
// committed before op seq: the op whose result a later op chained on key
// (a Copy whose SrcChained is set) starts from.
func (j *Journal) PendingBefore(key string, seq uint64) (PendingOp, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	q := j.keyQ[key]
	for i := len(q) - 1; i >= 0; i-- {
		if q[i].rec.Key == key && q[i].rec.Seq < seq {
			return j.pendingOpLocked(q[i]), true
		}
	}
	return PendingOp{}, false
}
