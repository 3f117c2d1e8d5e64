// Package expertd is the expert service of the mesh: one replica of one expert group. It loads
// only the routed experts it is configured with (Config.Experts, the same ids in every MoE layer)
// and answers Experts.Compute: for the hidden rows attnd routed to its group, the weighted sum of
// the chosen experts' SwiGLU FFNs, in one batched kernels.ExpertsFFN call. It keeps no state
// between calls, so replicas can come and go at any time.
//
// Lifecycle: New listens, serves with health NOT_SERVING, loads the experts, then reports
// SERVING; Shutdown reports NOT_SERVING and stops gracefully. Registration in discovery is the
// caller's (Server.Instance describes the replica).
//
// The wire helpers (AppendF32, DecodeF32, AppendI32, DecodeI32) and Fingerprint are shared with
// attnd, the only client of the Experts service.
//
// Who may import: cmd/dlmesh, attnd, mesh, tests. It imports model, kernels, services, proto.
package expertd
