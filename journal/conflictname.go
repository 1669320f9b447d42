package journal

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// maxNameLen is the longest file name most file systems take (NAME_MAX); a
// conflicted copy's name is kept within it so that every mount can show it.
const maxNameLen = 255

// conflictName returns the key our version of key goes to when the remote
// version keeps the name: "a/b.txt" → "a/b (conflicted copy 2026-11-21
// 153000 laptop).txt". The extension is kept so the copy opens with the same
// program; a name without one (or a dotfile such as ".bashrc") gets the
// suffix at the end.
func conflictName(key, host string, t time.Time) string {
	return conflictNameN(key, host, t, 1)
}

// conflictNameN is conflictName for the n-th candidate: n > 1 adds " n"
// inside the parentheses, for when the first names are taken.
func conflictNameN(key, host string, t time.Time, n int) string {
	dir, name := "", key
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		dir, name = key[:i+1], key[i+1:]
	}
	tag := " (conflicted copy " + t.Format("2006-01-02 150405") + " " + cleanHost(host)
	if n > 1 {
		tag += " " + strconv.Itoa(n)
	}
	tag += ")"
	stem, ext := splitExt(name)
	if len(tag)+len(ext) >= maxNameLen {
		stem, ext = name, "" // an absurdly long extension is just part of the name
	}
	if over := len(stem) + len(tag) + len(ext) - maxNameLen; over > 0 {
		stem = truncateUTF8(stem, len(stem)-over)
	}
	return dir + stem + tag + ext
}

// splitExt splits name before its extension: the last dot, unless it is the
// first character (a dotfile) or the last.
func splitExt(name string) (stem, ext string) {
	i := strings.LastIndexByte(name, '.')
	if i <= 0 || i == len(name)-1 {
		return name, ""
	}
	return name[:i], name[i:]
}

// cleanHost makes a host name safe inside a key segment.
func cleanHost(host string) string {
	host = strings.Map(func(r rune) rune {
		if r == '/' || r < ' ' {
			return '-'
		}
		return r
	}, host)
	if host == "" {
		return "unknown"
	}
	return host
}

// truncateUTF8 cuts s to at most n bytes without splitting a character.
func truncateUTF8(s string, n int) string {
	if n <= 0 {
		return ""
	}
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
