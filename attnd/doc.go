// Package attnd is the attention service of the mesh. It loads the attention part of the
// checkpoint only (embeddings, attention, norms, routers, shared experts, dense layers, LM head;
// never a routed expert), keeps one KV cache per session between steps, and runs Attention.Step:
// one model.Step over the batch of sessions it is given, serialised with the other steps.
//
// The routed experts are remote. For every MoE layer the model routes, then Dispatch (experts.go)
// downloads the hidden rows, the chosen ids and the weights once, groups the rows by expert group
// (a row goes once to each group that holds any of its choices, the other groups' ids set to -1),
// and calls every group in parallel while the model computes the shared expert. A group is a
// services.Pool of expertd replicas (least outstanding calls, one breaker per replica); every call
// has a deadline, and a call that fails, or has not answered within the pool's hedge delay
// (max(20 ms, 4 × the p99 of the group's recent calls), services.Hedge), runs once more on another
// replica of the group (Compute is idempotent); a replica with a call stuck past the delay is
// passed over until that call ends, so a hung replica costs one hedge delay, not the timeout. wait sums the groups' rows, in group order, and uploads them. Tensors travel as f32
// by default (exact parity with the in-process engine up to the order of one float addition per
// group), bf16 when Config.WireBF16 is set.
//
// Groups come from discovery: attnd watches the expertd instances, asks each new one for its
// expert set (Experts.Info, with the checkpoint fingerprint, which must match), and groups the
// replicas by that set. Health (grpc.health.v1, what the Consul check polls) is NOT_SERVING until
// the weights are loaded and every expert of every MoE layer is served by some group, and it
// follows the coverage from then on: when the last replica of a group leaves discovery health
// turns NOT_SERVING (steps fail with Unavailable naming the missing experts) and back to SERVING
// when a replica returns. With Config.AllowMissingExperts attnd serves degraded instead: health
// stays SERVING while at least top_k experts are served, the router may only choose experts that
// are still served (renormalising their weights), and StepStats.degraded says so.
//
// Step returns, per session, only the LM-head candidates of the rows asked for (top_k ids, their
// logits and the log-sum-exp), never full logits. A session of a step that is refused on its own
// (unknown, out of range, a non-finite inv_temperature) gets an error code in its result and the
// other sessions run; the step fails as a whole only when none can run.
//
// Admission and leases: Open refuses beyond max_sessions or when the sessions' windows would
// reserve more than max_kv_tokens KV positions (ResourceExhausted naming the limit). Every session
// has a lease (lease.go) renewed by its Steps and by Renew; the reaper frees expired sessions, so
// a gateway that dies leaks nothing. On a graceful stop attnd deregisters and drains
// (Config.DrainTimeout): the gateways migrate its sessions elsewhere before it stops.
//
// Lifecycle: a services.Node listens, serves NOT_SERVING while New loads the attention part, and
// stops in the house order on Shutdown (NOT_SERVING, deregistration, graceful stop); health.go
// decides when it is SERVING and registered. Errors map to status codes through Codes.
//
// Who may import: cmd/dlmesh, mesh, tests. It imports model, kernels (kernels/cpu for the default
// backend), tokenizer, services, wire, errdefs, proto; never another service package.
package attnd
