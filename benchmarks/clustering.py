"""Unsupervised clustering of the MNIST test set: k-means baselines and the mixture-prior VAE.

Clustering scores need the test labels, which ``zoo eval``'s metric sets never see (a
``MetricSet.run`` gets the images only), so they are measured here. For every row of the table:

- **accuracy**: the fraction of test images whose cluster maps to their digit under the best
  one-to-one map of clusters to digits (Hungarian matching, ``zoo_plugins.mixture_vae.clustering_accuracy``);
- **NMI**: normalised mutual information between clusters and digits (arithmetic-mean normalisation).

Rows:

- ``k-means on pixels``: k-means (k = 10, ``--restarts`` k-means++ seedings, seeded) on the raw test
  intensities in [0, 1];
- ``k-means on <model> latents``: the same k-means on ``encode(x)`` (posterior means for VAEs) of every
  pretrained model matching ``--models`` whose dataset is ``--data`` and which declares ``encode``;
- ``<model> cluster task``: a model's own ``cluster`` assignments, for models that declare it;
- with ``--runs DIR...``: the ``cluster`` task of each training run (e.g. one per seed), next to the
  run's final validation negative ELBO from its ``recipe.json``. The run with the lowest validation
  negative ELBO is marked as chosen (a label-free choice); the spread over runs is reported.

Models take the test images as a client sends them: grey intensities in [0, 1], not binarized.

    OMP_NUM_THREADS=1 python benchmarks/clustering.py --runs runs/mixture-vae-mnist-s* \\
        --out model_cards/mixture-vae-mnist/clustering.json
"""

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import zoo
import zoo.data
from zoo.components import kmeans
from zoo_plugins.mixture_vae import clustering_accuracy, normalized_mutual_information


def batched(fn, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def score(clusters: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {"accuracy": clustering_accuracy(clusters, labels), "nmi": normalized_mutual_information(clusters, labels),
            "clusters_used": int(torch.unique(clusters).numel())}


def kmeans_row(name: str, features: torch.Tensor, labels: torch.Tensor, k: int, restarts: int, seed: int) -> dict:
    started = time.time()
    fit = kmeans(features.flatten(1), k, restarts=restarts, generator=torch.Generator().manual_seed(seed))
    return {"method": name, **score(fit.labels, labels), "features": int(features.flatten(1).shape[1]),
            "seconds": round(time.time() - started, 1)}


@torch.no_grad()
def cluster_figures(model, images: torch.Tensor, out: Path, seed: int, per_row: int = 12) -> dict[str, str]:
    """components.png: one row of samples per mixture component (by decreasing weight); clusters.png: one row
    of test images per assigned cluster, in the same order (no labels involved)."""
    from zoo.images import write_grid

    model = model.eval()
    order = model.prior.weights.argsort(descending=True).tolist()
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for c in order:
        eps = torch.randn(per_row, model.prior.dim, generator=gen)
        rows.append(model.decode(model.prior.means[c] + torch.exp(0.5 * model.prior.logvars[c]) * eps))
    out.mkdir(parents=True, exist_ok=True)
    write_grid(torch.cat(rows), out / "components.png", nrow=per_row, scale=2)
    clusters = batched(model.cluster, images, 1000).long()
    grid = []
    for c in order:
        members = images[clusters == c][:per_row]
        blank = torch.zeros(per_row - len(members), *images.shape[1:])
        grid.append(torch.cat([members, blank]))
    write_grid(torch.cat(grid), out / "clusters.png", nrow=per_row, scale=2)
    return {"components": str(out / "components.png"), "clusters": str(out / "clusters.png")}


def final_val(recipe: dict, term: str = "neg_elbo") -> float | None:
    for record in reversed(recipe.get("history", [])):
        if term in record.get("val", {}):
            return float(record["val"][term])
    return None


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--split", default="test")
    parser.add_argument("--models", default="*mnist*", help="fnmatch pattern over the pretrained models")
    parser.add_argument("--runs", nargs="*", default=[], help="run folders of the cluster architecture (e.g. seeds)")
    parser.add_argument("--k", type=int, default=10, help="clusters for k-means")
    parser.add_argument("--restarts", type=int, default=10, help="k-means++ seedings per k-means")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="first N test images only")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    parser.add_argument("--figures", type=Path, default=None,
                        help="write components.png and clusters.png of the chosen run (or of the first model "
                             "declaring cluster) into this folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()

    dataset = zoo.data.load(args.data, args.split)
    images = dataset.images[:args.limit].float().div(255)
    labels = dataset.labels[:args.limit]
    rows = [kmeans_row("k-means on pixels", images, labels, args.k, args.restarts, args.seed)]

    for name in zoo.list_models(args.models):
        info = zoo.info(name)
        if info.get("metadata", {}).get("dataset", args.data) != args.data:
            continue
        model = zoo.load(name)
        if "encode" in model.tasks:
            latents = batched(model.encode, images, args.batch_size)
            rows.append({**kmeans_row(f"k-means on {name} latents", latents, labels, args.k, args.restarts,
                                      args.seed), "model": name})
        if "cluster" in model.tasks:
            clusters = batched(model.cluster, images, args.batch_size)
            rows.append({"method": f"{name} cluster task", "model": name, **score(clusters, labels)})

    runs = []
    for folder in map(Path, args.runs):
        recipe = json.loads((folder / "recipe.json").read_text())
        model = zoo.load(folder)
        if "cluster" not in model.tasks:
            raise SystemExit(f"{folder}: {model.architecture} does not declare the cluster task")
        clusters = batched(model.cluster, images, args.batch_size)
        runs.append({"run": str(folder), "seed": recipe["train_config"]["seed"], "status": recipe["status"],
                     "epochs": recipe["epochs_completed"], "wall_time_s": recipe.get("wall_time_s"),
                     "val_neg_elbo": final_val(recipe), "weights_sha256": recipe.get("weights_sha256"),
                     **score(clusters, labels)})
    summary = {}
    if runs:
        ranked = [r for r in runs if r["val_neg_elbo"] is not None and math.isfinite(r["val_neg_elbo"])]
        chosen = min(ranked, key=lambda r: r["val_neg_elbo"]) if ranked else None
        for r in runs:
            r["chosen"] = r is chosen
        summary = {"criterion": "lowest final validation negative ELBO (label-free)",
                   "chosen_run": chosen["run"] if chosen else None,
                   "accuracy": spread([r["accuracy"] for r in runs]), "nmi": spread([r["nmi"] for r in runs]),
                   "val_neg_elbo": spread([r["val_neg_elbo"] for r in ranked]) if ranked else None}

    figures = {}
    if args.figures:
        source = summary.get("chosen_run") or next((r["model"] for r in rows if r["method"].endswith("cluster task")),
                                                   None)
        if source is None:
            raise SystemExit("--figures: no run and no pretrained model declares the cluster task")
        figures = cluster_figures(zoo.load(source), images, args.figures, args.seed)

    result = {"format": 1, "dataset": args.data, "split": args.split, "data_checksum": dataset.checksum,
              "num_images": len(images), "input": "grey test intensities in [0, 1] (not binarized)",
              "k": args.k, "kmeans_restarts": args.restarts, "seed": args.seed,
              "metrics": {"accuracy": "unsupervised clustering accuracy, Hungarian-matched clusters to labels",
                          "nmi": "normalised mutual information, arithmetic-mean normalisation"},
              "rows": rows, "runs": runs, "runs_summary": summary, "figures": figures,
              "command": "python benchmarks/clustering.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "torch_version": torch.__version__, "threads": args.threads,
              "wall_time_s": round(time.time() - started, 1)}

    width = max(len(r["method"]) for r in rows) if rows else 10
    print(f"{'method':<{width}}  accuracy     NMI  clusters")
    for r in rows:
        print(f"{r['method']:<{width}}  {r['accuracy']:8.4f}  {r['nmi']:6.4f}  {r['clusters_used']:8d}")
    if runs:
        print(f"\n{'run':<40} seed  val -ELBO  accuracy     NMI")
        for r in runs:
            mark = "  <- chosen" if r["chosen"] else ""
            print(f"{r['run']:<40} {r['seed']:4d}  {r['val_neg_elbo']:9.3f}  {r['accuracy']:8.4f}  {r['nmi']:6.4f}{mark}")
        a, n = summary["accuracy"], summary["nmi"]
        print(f"over {a['n']} runs: accuracy {a['mean']:.4f} ± {a['std']:.4f} (min {a['min']:.4f}, max {a['max']:.4f}), "
              f"NMI {n['mean']:.4f} ± {n['std']:.4f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
