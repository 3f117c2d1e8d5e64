package cuda

import "runtime"

// thread is the one goroutine, locked to its OS thread, on which every driver call of a context
// runs: a CUDA context is current per OS thread, so calls from wandering goroutines would find no
// context (CUDA_ERROR_INVALID_CONTEXT, 201, on the first allocation).
type thread struct {
	work chan func()
	done chan struct{}
}

// startThread starts the locked goroutine and runs init on it (e.g. making the context current).
func startThread(init func() error) (*thread, error) {
	t := &thread{work: make(chan func()), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer close(t.done)
		if err := init(); err != nil {
			errc <- err
			return
		}
		errc <- nil
		for f := range t.work {
			f()
		}
	}()
	if err := <-errc; err != nil {
		<-t.done
		return nil, err
	}
	return t, nil
}

// call runs f on the thread and waits for it.
func (t *thread) call(f func() error) error {
	errc := make(chan error, 1)
	t.work <- func() { errc <- f() }
	return <-errc
}

// stop ends the thread after the calls already sent.
func (t *thread) stop() {
	close(t.work)
	<-t.done
}
