package mesh_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/gateway"
	"github.com/dlmesh/dlmesh/internal/fixtures"
	"github.com/dlmesh/dlmesh/internal/meshtest"
	"github.com/dlmesh/dlmesh/kernels/cpu"
	"github.com/dlmesh/dlmesh/mesh"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/tokenizer"
)

const tinyDir = "../models/llada2-tiny-go"

// The generation fixtures (internal/fixtures).
type (
	traceStep = fixtures.TraceStep
	genCase   = fixtures.GenCase
	genFile   = fixtures.GenFile
)

// shared is the mesh most tests use, started on first use and closed by TestMain.
var shared = meshtest.New(mesh.Config{ModelDir: tinyDir, Listen: "127.0.0.1:0"})

func sharedMesh(tb testing.TB) *mesh.Mesh { tb.Helper(); return shared.Mesh(tb) }

func TestMain(m *testing.M) { meshtest.Main(m, true, shared) }

// upMesh starts an embedded mesh on loopback ports and shuts it down at cleanup.
func upMesh(tb testing.TB, cfg mesh.Config) *mesh.Mesh {
	tb.Helper()
	cfg.ModelDir = tinyDir
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := mesh.Up(ctx, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := m.Close(); err != nil {
			tb.Errorf("mesh close: %v", err)
		}
	})
	return m
}

func dialGateway(tb testing.TB, m *mesh.Mesh) *gateway.Client {
	tb.Helper()
	c, err := gateway.Dial(m.Addrs().Gateway, services.ClientConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// request is the Generate request of a fixture case: its prompt text, which the gateway
// tokenises to the case's prompt ids.
func request(c genCase, id string) *pb.GenerateRequest {
	return &pb.GenerateRequest{RequestId: id, Input: &pb.GenerateRequest_Prompt{Prompt: c.Prompt},
		Params: &pb.DecodeParams{Mode: c.Mode, GenLength: int32(c.GenLength), BlockLength: int32(c.BlockLength)}}
}

// streamed is what one Generate stream delivered.
type streamed struct {
	steps  []*pb.StepEvent
	blocks []*pb.BlockEvent
	final  *pb.FinalEvent
}

func generate(ctx context.Context, c *gateway.Client, req *pb.GenerateRequest) (*streamed, error) {
	s := &streamed{}
	f, err := c.Generate(ctx, req, func(ev *pb.GenerateEvent) error {
		switch {
		case ev.GetStep() != nil:
			s.steps = append(s.steps, ev.GetStep())
		case ev.GetBlock() != nil:
			s.blocks = append(s.blocks, ev.GetBlock())
		}
		return nil
	})
	s.final = f
	return s, err
}

// checkCase replays the streamed step events on the prompt and compares every step with the
// reference trace (block, unmasked and edited positions, the block's tokens after the step), then
// the ids, text and number of forwards. As in the engine's test, a divergence is excused only at a
// step whose smallest masked-confidence distance to the threshold is under 1e-4 (a tie).
func checkCase(t *testing.T, f genFile, c genCase, s *streamed) {
	t.Helper()
	n, bl := len(c.PromptIDs), c.BlockLength
	window := (n + c.GenLength + bl - 1) / bl * bl
	x := make([]int32, window)
	copy(x, c.PromptIDs)
	for i := n; i < window; i++ {
		x[i] = f.MaskID
	}
	firstBlock := n / bl
	for i, ref := range c.Trace {
		if i >= len(s.steps) {
			t.Fatalf("stream stopped after %d steps, reference has %d", len(s.steps), len(c.Trace))
		}
		ev := s.steps[i]
		block := int(ev.GetBlock()) + firstBlock
		unmasked, edited := []int{}, []int{}
		for _, ch := range ev.GetChanges() {
			p := int(ch.GetPosition()) + n
			x[p] = ch.GetTokenId()
			if ch.GetKind() == pb.TokenChange_KIND_EDIT {
				edited = append(edited, p)
			} else {
				unmasked = append(unmasked, p)
			}
		}
		lo := block * bl
		same := block == ref.Block && slices.Equal(unmasked, nonNil(ref.Unmasked)) && slices.Equal(edited, nonNil(ref.Edited)) &&
			slices.Equal(x[lo:lo+bl], ref.Tokens)
		if !same {
			if ref.MinMargin != nil && *ref.MinMargin < 1e-4 {
				t.Skipf("step %d diverges at a tie (min margin %.2g < 1e-4)", i, *ref.MinMargin)
			}
			t.Fatalf("step %d (block %d):\n got block %d unmasked %v edited %v tokens %v\nwant unmasked %v edited %v tokens %v",
				i, ref.Block, block, unmasked, edited, x[lo:lo+bl], ref.Unmasked, ref.Edited, ref.Tokens)
		}
	}
	if len(s.steps) != len(c.Trace) {
		t.Errorf("%d step events, reference %d", len(s.steps), len(c.Trace))
	}
	fin := s.final
	if fin == nil {
		t.Fatal("no final event")
	}
	if got := int(fin.GetUsage().GetForwards()); got != c.Forwards {
		t.Errorf("%d forwards, reference %d", got, c.Forwards)
	}
	ids, text := cutCase(t, c)
	if !slices.Equal(fin.GetTokenIds(), ids) {
		t.Errorf("ids\n got %v\nwant %v", fin.GetTokenIds(), ids)
	}
	if fin.GetText() != text {
		t.Errorf("text\n got %q\nwant %q", fin.GetText(), text)
	}
	if want := map[bool]string{true: "length", false: "stop"}[len(ids) == c.GenLength]; fin.GetFinishReason() != want {
		t.Errorf("finish reason %q, want %q", fin.GetFinishReason(), want)
	}
	if fin.GetDegraded() {
		t.Error("degraded with every expert served")
	}
	var joined string
	for _, b := range s.blocks {
		joined += b.GetText()
	}
	if joined != fin.GetText() {
		t.Errorf("block texts %q != final text %q", joined, fin.GetText())
	}
}

var tinyTok = sync.OnceValues(func() (*tokenizer.Tokenizer, error) { return tokenizer.Load(tinyDir) })

// cutCase is what a request for fixture case c returns, as Hugging Face's generate: the first
// gen_length of the fixture's ids (the reference's whole window) and their text without special
// tokens.
func cutCase(tb testing.TB, c genCase) ([]int32, string) {
	tb.Helper()
	tok, err := tinyTok()
	if err != nil {
		tb.Fatal(err)
	}
	ids := c.IDs[:min(len(c.IDs), c.GenLength)]
	var plain []int32
	for _, id := range ids {
		if !tok.IsSpecial(id) {
			plain = append(plain, id)
		}
	}
	return ids, tok.Decode(plain)
}

func nonNil(v []int) []int {
	if v == nil {
		return []int{}
	}
	return v
}

// localEngine is the in-process engine on the bundled model with every expert local: the
// reference the mesh must equal. It is stopped, and the model freed, at cleanup.
func localEngine(tb testing.TB) (*engine.Engine, *tokenizer.Tokenizer) {
	tb.Helper()
	m, err := model.Load(context.Background(), tinyDir, cpu.New(), model.LoadOptions{Attention: true, Experts: model.AllExperts(16)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	tok, err := tokenizer.Load(tinyDir)
	if err != nil {
		tb.Fatal(err)
	}
	eng := engine.New(engine.Config{MaskID: tok.MaskID(), EOSID: tok.EOSID(), Vocab: m.Cfg.Vocab, MaxContext: m.Cfg.MaxPositions},
		engine.NewLocalStepper(m), tok)
	tb.Cleanup(eng.Stop)
	return eng, tok
}
