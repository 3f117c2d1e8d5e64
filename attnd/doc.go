// Package attnd is the attention service of the mesh. It loads the attention part of the
// checkpoint only (embeddings, attention, norms, routers, shared experts, dense layers, LM head;
// never a routed expert), keeps one KV cache per session between steps, and runs Attention.Step:
// one model.Step over the batch of sessions it is given, serialised with the other steps (a long
// prefill in chunks that other steps interleave with: see Steps and chunked prefill).
//
// The routed experts are remote. For every MoE layer the model routes, then Dispatch (experts.go)
// downloads the hidden rows, the chosen ids and the weights once, groups the rows by expert group
// (a row goes once to each group that holds any of its choices, the other groups' ids set to -1),
// encodes each group's rows once into its request and sends it, and returns while the model
// computes the shared expert; wait receives the answers and sums them, in group order, into
// the host buffer it uploads. A group is a services.Pool of expertd replicas (least outstanding
// calls, one breaker per replica); every call has a deadline, and a call that fails, or has not answered within the pool's hedge
// delay (max(20 ms, 4 × the p99 of the group's recent calls), services.Hedge), runs once more on
// another replica of the group (Compute is idempotent); a replica with a call stuck past the
// delay is passed over until that call ends, so a hung replica costs one hedge delay, not the
// timeout. Tensors travel as f32 by default (exact
// parity with the in-process engine up to the order of one float addition per group), bf16 when
// Config.WireBF16 is set.
//
// # The expert hop
//
// A hop is a Send on a lane and a Recv (lanes.go): each fan-out (one micro-batch's step) takes,
// per group, one long-lived Experts.ComputeStream to a replica for the whole step, and returns
// it to the Server's lane pool after. So a layer costs no goroutine, no new HTTP/2 stream, no
// per-call interceptor, context or client span, and its host buffers (hopBuf: activations,
// split, requests, sums) come from a pool: after warm-up a layer allocates only what protobuf
// decodes. The unary Compute stays the fallback: a lane that fails is dropped and its request
// retried as a unary call on another replica (on any replica when expertd lacks ComputeStream);
// the ExpertTimeout deadline is a timer per layer that cancels the lane. A step's trace keeps
// one attnd.experts span per layer with the group timings as attributes (group.rtt_ms,
// group.compute_ms, group.replica, and overlap_ms / blocked_ms: the caller's own work between
// Dispatch and wait, and how long wait then blocked); expertd starts its compute span only when
// the request carries the traceparent of a sampled trace. Step holds the session lock only to
// claim its sessions: Open and Close do not wait for a step that waits on its experts (a Close
// during the step frees the cache when the step ends).
//
// With several sessions a step is split into Config.MicroBatches micro-batches run concurrently
// (split.go): while one waits for its groups the other runs its attention, and the trace report
// (tracing) draws each micro-batch in a band of its own so the ping-pong is visible. The
// ping-pong hides a hop only when a micro-batch's attention takes as long as the other's hop:
// in the embedded CPU mesh (every service in one 2-core process) it does not (a trace of 6
// concurrent requests: 72% of the fan-out time of one micro-batch overlapped the other's, both
// queued at the same expertd), and the shared expert competes with the transport's goroutines
// for the same cores, so only 20-36% of the groups' computes started before attnd's shared
// expert ended (a runtime.Gosched after the sends, tried, did not help: 20%). Separate
// processes, or a GPU doing the attention, are what the overlap is for.
//
// Measured (BenchmarkExpertHop: one MoE layer of the tiny model, 2 groups of one expertd each on
// loopback; the machine is 2 shared cores with load averages of 6-25, so only ratios within one
// run hold). Before, the fan-out was a unary call per group in a new goroutine, the rows copied
// element by element into new request bytes, the answers decoded into new slices, a client and
// a server span per call. Its overhead over the slowest group's compute was 2.4-3.2× the echo
// floor (plain gRPC unary calls of the same bytes, both groups in parallel, to a server that
// answers at once) at 1 block and 2.0-2.1× at 8, with 1.1 MB and 1,665 allocations per layer
// (the echoes' included). The CPU profile then: ExpertsFFN half of the process's CPU, gRPC's
// transport a third (as much for the echoes as for the hop), the fan-out's own host work 5%, GC
// and allocation 7%; and the process was on a CPU only 27% of the wall time: the hop's cost is
// the chain of goroutine and thread wake-ups on its path (client writer, server reader, handler,
// the backend's workers, server writer, client reader), each waiting for a core, far more than
// its bytes. The mesh's gRPC options (stats handlers, interceptors) cost nothing measurable over
// plain gRPC (mesh-echo-us ≈ echo-us). After (lanes, pooled buffers), in one run at load ~10:
// 1.97× the echo at 1 block (1.41 ms over 0.71 ms) and 1.09× at 8, against 2.66× and 1.49× for
// unary calls with the same pooled buffers and 3.24× and 2.08× for the code before; half the
// bytes and a third fewer allocations per layer. So the stream is what paid, at both sizes; the
// pooled buffers alone bought little. The profile after: ExpertsFFN 55%, transport ~20% (echoes
// included), the fan-out's host work 4%, expertd's decoding 3%, GC 4.5%.
//
// On the same machine idle (load < 1; BenchmarkExpertHop -benchtime=300x): 584 µs of overhead
// per layer at 1 block, 1.65× the unary echo (354 µs) and 2.9× the echo over streams (198 µs,
// stream-echo-us), 1.19× the unary echo at 8 blocks. A profile of that run (-cpuprofile, 2000
// layers): the experts' kernels ~45% (bf16 widening 7% of it), syscalls 10%, memmove 8%,
// protobuf's decoding of the bytes fields 6% (echoes included: copying X and Y out of gRPC's
// buffers), the fan-out's own code ~2%. A codec aliasing gRPC's buffers (mem.BufferSlice) would
// save part of the 6%; it is not written. BenchmarkMeshVsEngine (-benchtime=4x, each
// iteration engine then mesh) reports in the same run the hops' floor (every MoE layer as a
// stream echo of its bytes, no compute) and floor-ratio = engine / (engine + that floor): at
// 1 stream mesh/engine 0.74 against a floor-ratio of 0.84 (single runs: 0.66-1.06), at 8
// streams 0.97 against 0.95 (single runs 0.95-1.15): at 1 stream the hop's transport alone
// costs more than the 10% the target allows on 2 shared cores; at 8 the micro-batches' overlap
// pays for it.
//
// # On the GPU
//
// The path is the same on the CUDA backend with two changes, both behind kernels.Stager (a
// backend with pinned host memory and stream-ordered copies; the CPU backend has none and keeps
// the plain Download/Upload): the hop's host buffers are pinned (cuMemHostAlloc) so the routed
// rows are downloaded, and the sums uploaded, with cuMemcpyDtoHAsync/HtoDAsync on the backend's
// stream, the download followed by one stream synchronisation (the rows must be on the host
// before they are sent) and the upload not waited for at all (the next op on the stream consumes
// it; the buffer is reused only after the next layer's synchronisation). The attention part of a
// layer stays graph-captured between hops (model.Prepared with remote experts, on a
// kernels.SegmentGrapher): the step's compute is cut at each Dispatch and wait into segments
// (the embedding and layers up to the first MoE router; per MoE layer the shared expert, then
// the routed sums' add and the layers up to the next router, the last ending with the LM head),
// each recorded once as a graph and replayed, the hop itself running on the host between two
// graph launches; the shared expert's graph is launched right after the Dispatch's download so
// the GPU works on it while the groups do. A graph needs a fixed shape, and the denoising steps
// of a block have one (same sessions, same positions, new tokens): plans.go keeps each
// micro-batch's prepared step and, when the next step fits it, uploads the new tokens and
// replays (a denoising step is recorded at its first run; other steps that ask for output rows
// when they fit a second time; prefill chunks never). This keeps one synchronisation per
// layer (the download), two graph launches per layer instead of a launch per kernel, and no
// per-layer allocation, which is what a ~0.44 ms layer of experts on a GPU leaves room for.
// Tested here on the fake driver (kernels/cuda TestStepSegmentsBetweenHops: 2·MoE layers + 1
// segments, the hops between launches, no kernel launched on a replay) and on the CPU, where
// no graph is recorded but the same plans are reused (TestStepReusesPlan: bit-identical to
// fresh plans); the GPU figures belong to the GPU issue.

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
// # Steps and chunked prefill
//
// Steps run one at a time under the step lock, a FIFO lock (fifo.go): it is granted in arrival
// order, and an unlock hands it straight to the longest waiter. A session step that feeds more
// than Config.PrefillChunk tokens before its output rows (a long prompt sent to Step directly; the
// gateway chunks its own prefills the same way, engine.Config.PrefillChunk, with the same default
// of 512) is cut (chunk.go) into chunks of that many tokens, rounded down to whole blocks of the
// session's block length, ending at absolute block boundaries (multiples of the block length from
// position 0): the leading chunks K/V only, the last one with the output rows. Under the
// block-causal mask a row never sees past the end of its block, so the chunks give bit for bit
// what the whole step gives. The Step then runs in rounds: the first runs its other sessions and
// the first chunk of each long one, each later round the next chunks, and between two rounds the
// Step releases the lock and queues for it again behind the Steps that came meanwhile. So a short
// Step waits for at most one round of a long one (TestChunkedStepInterleaves, tiny model, 2
// shared cores: 59-76 ms instead of 544-844 ms behind a 608-token step in chunks of 64), and the
// long Step itself takes one model.Step per chunk. A session in a running step, between its rounds too, is refused to any
// other Step (Aborted, ErrSessionBusy) and is never reaped; its lease is renewed every round and
// runs from the step's end.
//
// Between rounds a Step whose context ended stops, with Canceled or DeadlineExceeded: its
// sessions' caches hold the K/V of the chunks it completed, the cache length (and the KV tokens
// Load reports) grown to the end of the last one, which is what a later step reads. A re-sent
// step (its start_pos is at most the cache length, so it is accepted) feeds and rewrites every
// position again and gives what it would have given uninterrupted; a step continuing from the end
// of the completed chunks is exact too. (As for any step, what a step cancelled within a round,
// between two layers, wrote for that round's positions is unspecified until a step feeds them
// again.) A session closed between rounds gets NotFound in that Step's results, and a Shutdown
// between rounds ends the Step with Unavailable.
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
// Metrics (metrics.go): Collector exports the tokens the router sent to each (MoE layer, expert),
// the rows sent to each expert group and each layer's fan-out time; Load reports the per-expert
// and per-group totals in Info (for `dlmesh status`).
//
// Who may import: cmd/dlmesh, mesh, tests. It imports model, kernels (kernels/cpu for the default
// backend), tokenizer, services, wire, errdefs, proto; never another service package.
package attnd
