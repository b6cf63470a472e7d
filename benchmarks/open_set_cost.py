"""Wall time of `catsdogs predict` on 400 test photos: a model with an open-set score against the same run without.

    python benchmarks/open_set_cost.py runs/WITH_SCORE runs/WITHOUT_SCORE
"""

import statistics
import sys
import time

import catsdogs
from catsdogs.data.dataset import list_files


def main():
    with_score, without = catsdogs.load(sys.argv[1]), catsdogs.load(sys.argv[2])
    paths = list_files("../shared/data/cats-and-dogs/test_set")[::5][:400]
    for classifier in (with_score, without):
        classifier.predict(paths[:64])  # traces the graph outside the timing
    times = {"with": [], "without": []}
    pairs = (("with", with_score), ("without", without))
    for repeat in range(4):  # alternating, in both orders, so that slow spells and warm caches hit both alike
        for name, classifier in pairs if repeat % 2 == 0 else pairs[::-1]:
            start = time.perf_counter()
            classifier.predict(paths)
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(name, [round(v, 2) for v in values], "median ms/photo",
              round(1000 * statistics.median(values) / len(paths), 2))
    print("ratio", round(statistics.median(times["with"]) / statistics.median(times["without"]), 3))


if __name__ == "__main__":
    main()
