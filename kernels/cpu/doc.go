// Package cpu is the pure-Go float32 implementation of kernels.Backend: every op computes
// exactly the reference math stated in its doc comment in package kernels, spread over the
// available cores.
//
// Tensors live in host memory. BF16/F16 weights stay in their checkpoint bytes (Load may alias an
// mmap'd region, which is never written) and are widened to float32 a tile at a time inside the
// ops. A Backend is safe for concurrent use by several goroutines working on different tensors
// (it reports kernels.Concurrent).
//
// Who may import: model and the services' wiring (cmd, attnd, expertd), and tests.
package cpu
