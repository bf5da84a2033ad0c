"""KFP component `fetch_dataset`: VISION-layout data from a folder, S3 or the generator."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.

from typing import NamedTuple

from kfp.dsl import Dataset, Output

from components import visionops_component


@visionops_component
def fetch_dataset(
    dataset: Output[Dataset],
    sources: str = "",
    products: str = "",
) -> NamedTuple("FetchOutputs", [("roots", int)]):  # type: ignore[valid-type]
    """Fetch comma-separated `sources` (folder, s3://bucket/prefix, `synthetic[?k=v]`) into
    `dataset.path`; several land in numbered sub-folders listed in the `roots` metadata.

    An empty `sources` gives an empty dataset with no roots (no extra data). `products` limits
    generated data to those products.
    """
    from collections import namedtuple

    from visionops.bootstrap import bootstrap

    bootstrap()
    from visionops.data.fetch import fetch_datasets, split_sources

    selected = [p.strip() for p in products.split(",") if p.strip()] or None
    result = fetch_datasets(split_sources(sources), dataset.path, products=selected)
    dataset.metadata.update({"sources": result.sources, "roots": result.roots})
    dataset.metadata["files"] = result.files
    print(f"fetched {len(result.sources)} source(s), {result.files} files: {result.sources}")
    return namedtuple("FetchOutputs", ["roots"])(len(result.roots))
