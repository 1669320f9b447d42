package vfs

import "github.com/nimbus-fs/nimbus/backend/mem"

// memStore is the in-memory store of the tests that need keys the dir:
// store refuses (".nimbus-…").
type memStore = mem.Store

func newMemStore() *memStore { return mem.New() }
