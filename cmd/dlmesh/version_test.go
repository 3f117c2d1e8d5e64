package main

import (
	"bytes"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	settings := func(kv ...string) []debug.BuildSetting {
		var s []debug.BuildSetting
		for i := 0; i < len(kv); i += 2 {
			s = append(s, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return s
	}
	for _, c := range []struct {
		name string
		bi   *debug.BuildInfo
		ok   bool
		want string
	}{
		{"no build info", nil, false, "unknown (no build info)"},
		{"go run", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
			Settings: settings("GOOS", "linux", "GOARCH", "amd64", "CGO_ENABLED", "1")},
			true, "(devel) no vcs stamp, go1.26.8 linux/amd64"},
		{"clean checkout", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
			Settings: settings("GOOS", "linux", "GOARCH", "arm64", "CGO_ENABLED", "0", "vcs", "git",
				"vcs.revision", "acd70cc0123456789abcdef0123456789abcdef0", "vcs.time", "2026-12-02T00:19:00Z", "vcs.modified", "false")},
			true, "(devel) git acd70cc01234 2026-12-02T00:19:00Z, go1.26.8 linux/arm64 (no cgo)"},
		{"modified tree", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
			Settings: settings("vcs", "git", "vcs.revision", "abc", "vcs.modified", "true")},
			true, "(devel) git abc modified, go1.26.8"},
		{"installed module", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.3.0"},
			Settings: settings("GOOS", "linux", "GOARCH", "amd64")},
			true, "v0.3.0 no vcs stamp, go1.26.8 linux/amd64"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := version(c.bi, c.ok); got != c.want {
				t.Errorf("version = %q, want %q", got, c.want)
			}
		})
	}
}

func TestVersionFlag(t *testing.T) {
	root := rootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"--version"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	want := "dlmesh " + buildVersion() + "\n"
	if out.String() != want {
		t.Fatalf("--version printed %q, want %q", out.String(), want)
	}
	if strings.Contains(out.String(), "unknown") {
		t.Fatalf("--version without build info: %q", out.String())
	}
}
