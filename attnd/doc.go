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
// has a deadline and a failed call is retried once on another replica of the group (Compute is
// idempotent). wait sums the groups' rows, in group order, and uploads them. Tensors travel as f32
// by default (exact parity with the in-process engine up to the order of one float addition per
// group), bf16 when Config.WireBF16 is set.
//
// Groups come from discovery: attnd watches the expertd instances, asks each new one for its
// expert set (Experts.Info, with the checkpoint fingerprint, which must match), and groups the
// replicas by that set. Health is NOT_SERVING until the weights are loaded and every expert of
// every MoE layer is served by some group. If a group later disappears, attnd reports
// NOT_SERVING and keeps stepping in degraded mode: the router may then only choose experts that
// are still served, and StepStats.degraded says so.
//
// Step returns, per session, only the LM-head candidates of the rows asked for (top_k ids, their
// logits and the log-sum-exp), never full logits.
//
// Who may import: cmd/dlmesh, mesh, tests. It imports model, kernels, services, proto, expertd
// (for its wire helpers).
package attnd
