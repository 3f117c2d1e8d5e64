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
// Tensors are decoded and encoded with package wire; the checkpoint identity it reports in Info
// is model.Fingerprint.
//
// Who may import: cmd/dlmesh, mesh, tests. It imports model, kernels, services, wire, proto.
package expertd
