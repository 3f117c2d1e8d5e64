//go:build race

package mesh_test

// raceEnabled: the race detector slows the CPU kernels about 20×, so the fixture parity runs
// (hundreds of forwards) are left to the normal build and the race build drives the same
// concurrency with short requests.
const raceEnabled = true
