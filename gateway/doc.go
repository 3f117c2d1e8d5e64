// Package gateway is the client-facing service of the mesh: Gateway.Generate. It tokenises the
// request, validates it, and runs it through an engine.Engine (the same scheduler and diffusion
// policy as the in-process `dlmesh run`) whose Stepper is a RemoteStepper calling attnd over gRPC,
// so the mesh produces the in-process engine's output token for token. It streams a StepEvent per
// denoising step (the positions that changed, with token id, text and UNMASK/EDIT), a BlockEvent
// per frozen block, and one FinalEvent (text, finish reason, usage, degraded flag).
//
// Input: `prompt` is tokenised as is. `messages` are rendered with the model's chat template
// (tokenizer_config.json's chat_template, rendered as Hugging Face apply_chat_template does, by
// package chat) with add_generation_prompt true. A model without a template gets the built-in
// default, one turn at a time and then the assistant's opening tag:
//
//	<role>ROLE</role>CONTENT<|role_end|>   (for every message, ROLE a lowercase word: system, user, …)
//	<role>assistant</role>
//
// Output: as Hugging Face's generate, at most gen_length tokens, cut at EOS, the text without
// special tokens (keep_special_tokens keeps them) and cut before the first stop string;
// finish_reason "stop" or "length". BlockEvent texts are append-only pieces of the final text.
//
// Front ends: gRPC Generate and the OpenAI-compatible HTTP API (gateway/httpapi) both run on the
// in-process API of api.go (Run, Tokenizer, RenderMessages, Ready), so they share the engine. Config.APIKey
// requires "authorization: Bearer KEY" metadata on Generate.
//
// Errors: a bad request gets InvalidArgument naming the field and its range (for example
// "diffusion: invalid tau_mask 2: want a value in (0, 1]"), a full queue ResourceExhausted, a
// missing attnd Unavailable. A cancelled or expired call leaves the batch at the next step
// boundary and its attnd session is closed.
//
// Discovery: the gateway watches the attnd instances of the registry and keeps them in a
// services.Pool; a request's session stays on the attnd it was opened on. Health is SERVING
// while at least one attnd is known. Its life (listen, health, registration, graceful stop) is a
// services.Node; errors map to status codes through Codes.
//
// Client is a small helper that streams one Generate (used by `dlmesh generate`).
//
// Who may import: cmd/dlmesh, mesh, tests. It imports engine, diffusion, tokenizer, chat, model
// (config only), services, wire, errdefs, proto; never another service package.
package gateway
