//go:build !race

package cache

// poisonReleased: see poison_race.go.
const poisonReleased = false
