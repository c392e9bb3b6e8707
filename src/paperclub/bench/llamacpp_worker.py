"""The llama.cpp side of `paperclub bench`, run with the interpreter of a venv that has llama-cpp-python:

    $PAPERCLUB_LLAMACPP_PYTHON bench_llamacpp_worker.py MODEL.gguf THREADS

It must not import paperclub or torch. Protocol: JSON lines. It first writes {"version": ...} (or {"error"}),
then answers each request {"prompts": [[ids]], "n", "temperature", "seed"} with {"outputs": [[ids]], "wall_s"}:
one prompt at a time (batch 1), exactly n new tokens each (the raw token generator does not stop at EOS),
wall_s summed over the generations (prefill included, loading and this protocol excluded).
"""

import json
import sys
import time


def generate(llm, prompt: list[int], n: int, temperature: float, seed: int) -> list[int]:
    llm.reset()  # forget the previous prompt: no prefix reuse across generations
    llm.set_seed(seed)
    out = []
    sampling = dict(temp=temperature, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0)
    for token in llm.generate(prompt, reset=True, **sampling):
        out.append(int(token))
        if len(out) >= n:
            break
    return out


def main() -> None:
    path, threads = sys.argv[1], int(sys.argv[2])
    try:
        import llama_cpp

        llm = llama_cpp.Llama(model_path=path, n_ctx=4096, n_batch=512, n_threads=threads,
                              n_threads_batch=threads, verbose=False)
    except Exception as e:  # report any load failure on the protocol, then exit
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return
    print(json.dumps({"version": llama_cpp.__version__}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        outputs, wall = [], 0.0
        for i, prompt in enumerate(req["prompts"]):
            t0 = time.perf_counter()
            outputs.append(generate(llm, prompt, req["n"], req["temperature"], req["seed"] + i))
            wall += time.perf_counter() - t0
        print(json.dumps({"outputs": outputs, "wall_s": wall}), flush=True)


if __name__ == "__main__":
    main()
