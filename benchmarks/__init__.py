"""Benchmarks of resnet_fpn against torchvision: a program about the library, not part of it.

Run from the repository root (``python -m`` puts the working directory on ``sys.path``; nothing else does):

    python -m benchmarks                                  # every case; rewrites this machine's section
                                                          # of docs/benchmarks.md
    python -m benchmarks --quick --out /tmp/bench.md      # small sizes, a smoke run
    python -m benchmarks --cases backbone detector --repeats 7 --out /tmp/bench.md

Layout:
    settings     BenchmarkSettings, the case names
    timing       alternating timing of candidates with torch.utils.benchmark.Timer
    models       torchvision's models and ours with the same weights
    agreement    how far our outputs are from torchvision's (features, detections, losses)
    inference    backbone and detector inference cases
    roofline     the fp32 ceiling row: a model's MACs at the matmul rate timed beside it
    training     training-step cases
    memory       peak memory of one call, each in a fresh process (also that process's entry point)
    evaluator    pycocotools against faster-coco-eval, through resnet_fpn.evaluation's public API
    machine      CPU model and flags, oneDNN bf16, versions; the machine class a report section is filed under
    results      the rows the cases return
    report       Markdown tables, and the per-machine-class sections of docs/benchmarks.md
    run          run_benchmarks: the selected cases in order
    __main__     the command line
"""
