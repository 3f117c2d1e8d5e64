// Package expertd is the expert service of the mesh: one replica of one expert group. It loads
// only the routed experts it is configured with (Config.Experts, the same ids in every MoE layer)
// and answers Experts.Compute: for the hidden rows attnd routed to its group, the weighted sum of
// the chosen experts' SwiGLU FFNs, in one batched kernels.ExpertsFFN call. It keeps no state
// between calls, so replicas can come and go at any time.
//
// Lifecycle (a services.Node): New listens, serves with health NOT_SERVING, loads the experts,
// reports SERVING and registers the replica in the registry it is given (as Server.ID);
// Shutdown reports NOT_SERVING, deregisters, stops gracefully and frees the experts. Errors map
// to status codes through Codes.
//
// Tensors are decoded and encoded with package wire; the checkpoint identity it reports in Info
// is model.Fingerprint.
//
// Who may import: cmd/dlmesh, mesh, tests. It imports model, kernels (kernels/cpu for the default
// backend), services, wire, errdefs, proto; never another service package.
package expertd
