// Package httpapi is the gateway's OpenAI-compatible HTTP API, on net/http, next to its gRPC
// Generate and on the same engine (so both share one queue, one attnd pool, one result):
//
//	GET  /v1/models               the served model
//	POST /v1/completions          prompt: a string or token ids ([1, 2, 3]; a batch of one is accepted)
//	POST /v1/chat/completions     messages rendered with the model's chat template
//
// Fields: max_tokens / max_completion_tokens (the gen_length: at most that many tokens come
// back), temperature (default 1 as OpenAI; 0 is greedy), top_p, top_k, seed, stop (a string or
// a list), stream with stream_options.include_usage, n (only 1); the decoding extras, top level:
// mode (q, s, v20), tau_mask, tau_edit, block_length, max_post_steps, skip_special_tokens (default
// true) and denoise_events.
//
// Streaming: OpenAI deltas are append-only, and a diffusion model rewrites a block until it is
// finished, so a stream carries committed text: each finished block's text (cut at gen_length,
// EOS and stop strings) as one delta, as `data: {chunk}` server-sent events, a last chunk with the
// finish_reason, an optional usage chunk, then `data: [DONE]`. With "denoise_events": true the
// stream also carries, per denoising step, an `event: denoise` whose data has the block's
// provisional text and the positions unmasked and edited (OpenAI SDKs skip or pass through named
// events; opt in only with a client that reads them).
//
// Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}}: 400 naming the
// field and its range, 401 (a bad or missing API key), 404 (unknown model or path), 413 (body over
// Config.MaxBodyBytes), 429 (the queue is full), 503 (no attnd, or experts missing). A client that
// disconnects cancels its request: it leaves the batch at the next step and its attnd session is
// closed.
//
// Who may import: cmd/dlmesh, mesh, tests. It imports gateway, engine, diffusion, services,
// tokenizer.
package httpapi
