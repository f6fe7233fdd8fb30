"""`vlm index build|embed|from-parts|info|check|backup`."""

from __future__ import annotations

import argparse
import json

from data_pipelines.options import add_source_arguments, source_options

PRECISIONS = ("fp32", "bf16", "int8", "auto")  # vlm.models.precision.PRECISIONS, without torch for `vlm --help`
FAISS_FLAGS = ("exact_max", "approximate", "max_index_memory", "index_factory")
MILVUS_INDEX_TYPES = ("FLAT", "HNSW", "IVF_PQ", "DISKANN")  # vlm.index.milvus.INDEX_TYPES (tested equal)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("index", help="build, inspect, check or back up a retrieval index folder")
    sub = p.add_subparsers(dest="index_command", required=True)
    add_build_parser(sub)
    add_embed_parser(sub)
    i = sub.add_parser("info", help="print an index folder's size, model and search structure")
    i.add_argument("directory")
    i.set_defaults(func=cmd_info)
    c = sub.add_parser("check", help="check every file of an index folder (table, commit mark, snapshots) offline; "
                       "exit 1 when something is wrong")
    c.add_argument("directory")
    c.add_argument("--repair", action="store_true", help="accept the table as it is (ids continue after the highest "
                   "ever issued) and rebuild damaged snapshots; refused while a server holds the folder")
    c.set_defaults(func=cmd_check)
    add_from_parts_parser(sub)
    k = sub.add_parser("backup", help="a consistent copy of an index folder, also while a server writes it "
                       "(never copy a live folder with cp)")
    k.add_argument("directory")
    k.add_argument("out", help="a new folder")
    k.set_defaults(func=cmd_backup)


def add_build_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("build", help="embed a collection (pairs source or image folder) into an index")
    b.add_argument("--checkpoint", required=True, help="late-fusion (dual_encoder) checkpoint")
    b.add_argument("--data", required=True, help="CSV/TSV/JSONL pairs, shards, COCO/Karpathy JSON, shapes world "
                   "folder or a folder of images")
    b.add_argument("--out", required=True, help="index folder to write")
    b.add_argument("--split", help="Karpathy or shapes-world split")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--backend", choices=["faiss", "milvus"], default="faiss")
    b.add_argument("--milvus-uri", default="", help="Milvus server URI (default: a milvus-lite file in the index)")
    b.add_argument("--milvus-collection", default="vlm", help="Milvus collections are NAME_image, NAME_text "
                   "and, on a server, NAME_items (default: vlm); writers that name the same one share it")
    b.add_argument("--milvus-token", default="", help="Milvus token, user:password or an API key (default: "
                   "$VLM_MILVUS_TOKEN, which keeps it out of the process list); never written to the index")
    b.add_argument("--milvus-index", choices=MILVUS_INDEX_TYPES, default="FLAT", help="Milvus index type of new "
                   "collections: FLAT (exact), HNSW (M=32, ef=max(k,128)), IVF_PQ (nlist 1024, dim/4 codes of 8 "
                   "bits, nprobe 32), DISKANN (a server's SSD index)")
    add_faiss_arguments(b)
    b.add_argument("--overwrite", action="store_true", help="replace an existing index at --out (refused while a "
                   "server has it open)")
    b.add_argument("--precision", choices=PRECISIONS, default="fp32", help="int8: the image tower in int8 (within "
                   "cosine 0.99 of fp32; texts stay fp32); bf16: CPU autocast; auto: what measured fastest on this "
                   "CPU class; recorded in the index with the CPU class, queries follow it")
    add_part_arguments(b)
    add_source_arguments(b)
    b.set_defaults(func=cmd_build)


def add_embed_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("embed", help="embed a collection into .npy + parquet parts only (clip-retrieval's layout, "
                       "for autofaiss or a Milvus cluster); under torchrun every rank writes its own parts")
    e.add_argument("--checkpoint", required=True, help="late-fusion (dual_encoder) checkpoint")
    e.add_argument("--data", required=True, help="any source `vlm index build` reads")
    e.add_argument("--out", required=True, help="parts folder to write (a killed run started again resumes it)")
    e.add_argument("--split", help="Karpathy or shapes-world split")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--precision", choices=PRECISIONS, default="fp32", help="the image tower's (see index build)")
    add_part_arguments(e)
    add_source_arguments(e)
    e.set_defaults(func=cmd_embed)


def add_from_parts_parser(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("from-parts", help="an index folder from embedding parts (vlm index embed on N machines, "
                       "or any writer of the layout); the parts are linked into it, no model runs")
    f.add_argument("parts", help="the parts folder (parts.json, img_emb/, text_emb/, metadata/, done/)")
    f.add_argument("--out", required=True, help="index folder to write")
    f.add_argument("--image-root", help="the folder the parts' relative image paths are relative to (default: "
                   "none; paths are kept as the parts hold them)")
    add_faiss_arguments(f)
    f.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    f.set_defaults(func=cmd_from_parts)


def add_faiss_arguments(parser: argparse.ArgumentParser) -> None:
    """The faiss structure of a new folder: one set of flags for `build` and `from-parts`."""
    parser.add_argument("--exact-max", type=int, help="faiss: exact search up to this many items, approximate above "
                        "(default: 1,000,000)")
    parser.add_argument("--approximate", choices=["hnsw", "ivf"], help="faiss: the structure above --exact-max "
                        "(default: hnsw)")
    parser.add_argument("--max-index-memory", metavar="SIZE", help="faiss: choose the structure to fit this much "
                        "memory (4G, 512M): flat, HNSW, IVF-Flat or OPQ+IVF+PQ with the largest code that fits, "
                        "built by streaming; nprobe/efSearch tuned to recall@10 >= 0.95, recorded in index.json")
    parser.add_argument("--index-factory", metavar="STRING", help="faiss: this factory string instead (e.g. "
                        "'OPQ64_512,IVF4096,PQ64x8'); wins over --max-index-memory, tuned and recorded alike")


def add_part_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--part-size", type=int, default=10_000, help="images per embedding part, the unit a "
                        "killed build resumes from (default: 10000)")
    parser.add_argument("--copy-images", action="store_true", help="keep a copy of each image's original bytes "
                        "(default: refer to its file, URL or shard member)")


def given(args: argparse.Namespace, *names: str) -> dict:
    """The options among `names` given on the command line; the config dataclass keeps its own defaults."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def cmd_build(args: argparse.Namespace) -> int:
    from vlm.index.backends import FaissConfig
    from vlm.index.build import BuildOptions, build_index
    from vlm.models.precision import resolve_precision
    from vlm.train.distributed import shutdown_distributed

    options = BuildOptions(split=args.split, batch_size=args.batch_size, backend=args.backend,
                           faiss=FaissConfig(**given(args, *FAISS_FLAGS)),
                           milvus_uri=args.milvus_uri, milvus_index=args.milvus_index,
                           milvus_collection=args.milvus_collection,
                           milvus_token=args.milvus_token, overwrite=args.overwrite, source=source_options(args),
                           precision=resolve_precision(args.precision, "encode"), part_size=args.part_size,
                           copy_images=args.copy_images)
    try:
        build_index(args.checkpoint, args.data, args.out, options)
    finally:
        shutdown_distributed()
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from vlm.index.embed import EmbedOptions, embed_to
    from vlm.models.precision import resolve_precision
    from vlm.train.distributed import shutdown_distributed

    options = EmbedOptions(split=args.split, batch_size=args.batch_size, part_size=args.part_size,
                           precision=resolve_precision(args.precision, "encode"), copy_images=args.copy_images,
                           label="index embed",
                           source=source_options(args))
    try:
        embed_to(args.checkpoint, args.data, args.out, options)
    finally:
        shutdown_distributed()
    return 0


def cmd_from_parts(args: argparse.Namespace) -> int:
    from vlm.index.backends import FaissConfig
    from vlm.index.from_parts import build_from_parts

    faiss = FaissConfig(**given(args, *FAISS_FLAGS))
    count = build_from_parts(args.parts, args.out, faiss, args.image_root, args.overwrite)
    print(f"{args.out}: {count} items from {args.parts}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from vlm.index.build import index_info

    print(json.dumps(index_info(args.directory), indent=2))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from vlm.index.check import check_index

    report = check_index(args.directory, repair=args.repair)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] or report.get("repaired") else 1


def cmd_backup(args: argparse.Namespace) -> int:
    from vlm.index.check import backup_index

    print(json.dumps(backup_index(args.directory, args.out), indent=2))
    return 0
