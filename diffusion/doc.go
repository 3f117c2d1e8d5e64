// Package diffusion is the LLaDA2.0/2.1 block-diffusion decoding policy as pure logic: the
// per-request window and block state, Mask-to-Token (M2T) unmasking, Token-to-Token (T2T)
// editing, the post-edit loop, EOS and length endings, and the sampler that turns a position's
// top-K candidates into one prediction.
//
// It holds no model. A driver (the in-process engine, the gateway) runs the model on the current
// block, turns each position's output into a [Pred] (with a [Sampler]), and feeds them to
// [State.Step] until [State.Done]:
//
//	st, err := diffusion.NewState(prompt, params, maskID, eosID)
//	smp := diffusion.NewSampler(params)
//	for !st.Done() {
//		lo, hi := st.Block()
//		cands := model(st.Tokens()[:hi])[lo:hi] // one Candidates per block position
//		preds := make([]diffusion.Pred, len(cands))
//		for i, c := range cands {
//			preds[i] = smp.Pick(c)
//		}
//		res, err := st.Step(preds)
//		...
//	}
//	ids := st.Output()
//
// The rule follows generate in shared/tools/reference/llada2_ref.py literally; that script is
// the tie-breaker for every detail (see "The decoding rule" in ARCHITECTURE.md).
//
// The package imports only the standard library and errdefs (a *ParamError wraps
// errdefs.ErrInvalidArgument); anything may import it. A State is not safe
// for concurrent use; a Sampler neither.
package diffusion
