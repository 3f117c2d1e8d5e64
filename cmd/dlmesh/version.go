package main

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// version is what `dlmesh --version` prints: the module version and, for a binary built from a
// VCS checkout (go build stamps it, -buildvcs), the revision, its commit time and whether the
// tree had uncommitted changes; then the Go toolchain and platform. `go run` and test binaries
// carry no VCS stamp, and say so.
func version(bi *debug.BuildInfo, ok bool) string {
	if !ok || bi == nil {
		return "unknown (no build info)"
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	parts := []string{v}
	if rev := settings["vcs.revision"]; rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		vcs := settings["vcs"]
		if vcs == "" {
			vcs = "vcs"
		}
		parts = append(parts, vcs+" "+rev)
		if t := settings["vcs.time"]; t != "" {
			parts = append(parts, t)
		}
		if settings["vcs.modified"] == "true" {
			parts = append(parts, "modified")
		}
	} else {
		parts = append(parts, "no vcs stamp")
	}
	goos, goarch := settings["GOOS"], settings["GOARCH"]
	platform := bi.GoVersion
	if goos != "" && goarch != "" {
		platform += " " + goos + "/" + goarch
	}
	if settings["CGO_ENABLED"] == "0" {
		platform += " (no cgo)"
	}
	return fmt.Sprintf("%s, %s", strings.Join(parts, " "), platform)
}

func buildVersion() string { return version(debug.ReadBuildInfo()) }
