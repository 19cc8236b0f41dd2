"""Multiple-choice benchmarks (C-Eval, CMMLU, MMLU): ``formats`` reads the CSV folders,
``prompts`` builds the benchmarks' own prompts, ``scoring`` scores each choice with the
shared few-shot prefix computed once, ``report`` prints and writes the results;
``evaluate.evaluate_benchmark`` runs them in that order (inference/evaluate_benchmark.py)."""
