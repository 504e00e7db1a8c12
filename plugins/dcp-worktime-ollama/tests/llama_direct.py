"""Test helper, run as a script: llama.cpp (xllamacpp) called directly, with no worktime in between.

    python llama_direct.py MODEL.gguf < requests.json      # prints the completions' texts as JSON
    python llama_direct.py MODEL.gguf --serve              # an HTTP llama.cpp server on 127.0.0.1

With ``--serve`` it prints the server's URL on its first line, serves the model under the name
``gemma3:270m`` (llama.cpp's OpenAI-compatible API, the one Ollama also offers under /v1), and
runs until SIGTERM. Both modes load the model with one thread, as the worktime's evaluators do.
"""

import json
import os
import signal
import sys
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import xllamacpp as xlc  # noqa: E402


def server(model: str, serve: bool) -> "xlc.Server":
    p = xlc.CommonParams()
    p.model.path = model
    p.model_alias = {"gemma3:270m"}
    p.n_ctx = 4096
    p.n_parallel = 1
    p.cpuparams.n_threads = 1
    p.cpuparams_batch.n_threads = 1
    p.cache_ram_mib = 0
    p.verbosity = 1
    p.ui = False
    p.fit_params = False
    if serve:
        p.hostnames = ["127.0.0.1"]
        p.port = 0  # a free port, chosen by the kernel
    else:
        p.hostnames = [os.path.join(tempfile.mkdtemp(), "direct.sock")]
    return xlc.Server(p)


def main() -> None:
    model = sys.argv[1]
    if "--serve" in sys.argv:
        # Blocked before llama.cpp starts its threads (they inherit the mask), so SIGTERM reaches
        # sigwait below instead of llama.cpp's own handler.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        s = server(model, serve=True)
        print(s.listening_address, flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        return
    s = server(model, serve=False)
    texts = []
    for body in json.load(sys.stdin):
        body = {**body, "stream": False}
        r = s.handle_chat_completions(body) if "messages" in body else s.handle_completions(body)
        choice = r["choices"][0]
        texts.append(choice["message"]["content"] if "message" in choice else choice["text"])
    print(json.dumps(texts))


if __name__ == "__main__":
    main()
    os._exit(0)  # llama.cpp's server threads need no orderly goodbye
