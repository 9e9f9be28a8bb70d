"""A public high-dimensional sparse text data set built on the spot: Debian package descriptions by section.

Every Debian system can list the packages of its archive with their descriptions (``apt-cache
dumpavail``, and the long descriptions of the English translation index, which ``apt-get update -o
Acquire::Languages=en`` fetches where a system leaves it out). Each package belongs to a section
(``games``, ``science``, ``sound``, ...), and its description is a few sentences of English about what
it does: a bag-of-words classification problem of tens of thousands of words, each description holding
well under 1% of them, the kind of data on which a sparse network's input layer sees few nonzero inputs
per sample. Sections named after a programming
language or a packaging role (``python``, ``libdevel``, ``doc``, ...) are left out: their descriptions
name the language, which would make the task a keyword lookup.

Writes ``train.svm`` and ``test.svm`` (word counts, a stratified 80/20 split of the packages with
``--seed``), ``vocabulary.txt`` (feature ``i`` is line ``i``, counting from 1) and ``PROVENANCE.md`` into
``--out``::

    python tools/debian_text.py --out data/debian-text
    python -m wasap.run --dataset data/debian-text/train.svm,data/debian-text/test.svm --hidden 1000,1000,1000

The descriptions come from the Packages indices of the machine's configured Debian archive; they are part
of the archive's metadata, which Debian distributes freely with its packages. The package list changes
with each release and update, so PROVENANCE.md records the source, its date and the counts.
"""

import argparse
import datetime
import glob
import os
import re
import subprocess
import sys

import numpy as np

#: Sections whose descriptions say what a program does, not which language it is written in.
SECTIONS = ("admin", "games", "graphics", "net", "science", "sound", "text", "utils")
#: A word is kept when at least this many training descriptions hold it.
MIN_DOCUMENTS = 2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for train.svm, test.svm and PROVENANCE.md")
    parser.add_argument("--seed", type=int, default=0, help="seeds the train/test split")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    return parser.parse_args(argv)


def _records(text):
    """The fields of each record of a Debian control-style listing: a list of ``{field: value}`` dicts,
    continuation lines joined to their field's value (a lone ``.`` is a paragraph break)."""
    records = []
    for block in text.split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key is not None:
                content = line.strip()
                fields[key] += " " + ("" if content == "." else content)
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            records.append(fields)
    return records


def _run(command):
    try:
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        sys.exit(f"error: {' '.join(command[:2])} failed ({error}); this tool needs a Debian or Ubuntu system with "
                 "its package lists (apt-get update -o Acquire::Languages=en).")


def long_descriptions():
    """``{description md5: long description}`` from the archive's English translation indices."""
    found = {}
    for path in glob.glob("/var/lib/apt/lists/*_i18n_Translation-en*"):
        for fields in _records(_run(["/usr/lib/apt/apt-helper", "cat-file", path])):
            if "Description-md5" in fields and "Description-en" in fields:
                found[fields["Description-md5"]] = fields["Description-en"]
    return found


def packages():
    """``{package: (section, description)}`` of the packages of :data:`SECTIONS`, long descriptions where the
    translation index has them."""
    translations = long_descriptions()
    if not translations:
        sys.exit("error: no English long descriptions (Translation-en) in /var/lib/apt/lists; fetch them with "
                 "apt-get update -o Acquire::Languages=en, then run this tool again.")
    found = {}
    for fields in _records(_run(["apt-cache", "dumpavail"])):
        name, section = fields.get("Package"), fields.get("Section", "").rpartition("/")[2]
        description = translations.get(fields.get("Description-md5"), fields.get("Description"))
        if name and section in SECTIONS and description:
            found.setdefault(name, (section, description))
    return found


def main(argv=None):
    args = parse_args(argv)
    from sklearn.datasets import dump_svmlight_file
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.model_selection import train_test_split

    found = packages()
    names = sorted(found)
    labels = np.array([SECTIONS.index(found[name][0]) for name in names])
    texts = [found[name][1] for name in names]
    train_texts, test_texts, y_train, y_test = train_test_split(
        texts, labels, test_size=args.test_fraction, random_state=args.seed, stratify=labels)
    vectorizer = CountVectorizer(lowercase=True, token_pattern=r"(?u)\b[a-z][a-z0-9+-]+\b", min_df=MIN_DOCUMENTS)
    X_train = vectorizer.fit_transform(train_texts)
    X_test = vectorizer.transform(test_texts)
    os.makedirs(args.out, exist_ok=True)
    dump_svmlight_file(X_train, y_train, os.path.join(args.out, "train.svm"), zero_based=False)
    dump_svmlight_file(X_test, y_test, os.path.join(args.out, "test.svm"), zero_based=False)
    with open(os.path.join(args.out, "vocabulary.txt"), "w") as stream:
        stream.write("\n".join(vectorizer.get_feature_names_out()) + "\n")
    density = X_train.nnz / (X_train.shape[0] * X_train.shape[1])
    counts = ", ".join(f"{section} {int((labels == k).sum())}" for k, section in enumerate(SECTIONS))
    source = ", ".join(line.strip() for line in _apt_sources() if line.strip()) or "the configured apt sources"
    provenance = f"""# Debian package descriptions by section

Built by `python tools/debian_text.py --out {args.out} --seed {args.seed}` on {datetime.date.today()}.

- Source: the Packages and Translation-en indices of the Debian archive ({source}), read with
  `apt-cache dumpavail` and `apt-helper cat-file`: each package's `Section` and its English description
  (short and long). Debian distributes this metadata freely with
  its packages; the descriptions are written by the packages' maintainers.
- Samples: {len(names)} packages of the sections {", ".join(SECTIONS)} (class k is the k-th, from 0):
  {counts}.
- Features: word counts of lower-cased words of at least two characters, kept when at least
  {MIN_DOCUMENTS} training descriptions hold them: {X_train.shape[1]} words (vocabulary.txt), training
  density {100 * density:.3f}%, {X_train.nnz / X_train.shape[0]:.1f} nonzeros per description.
- Split: stratified, {1 - args.test_fraction:.0%} / {args.test_fraction:.0%} with seed {args.seed}:
  {X_train.shape[0]} train, {X_test.shape[0]} test (train.svm, test.svm; features numbered from 1).
"""
    with open(os.path.join(args.out, "PROVENANCE.md"), "w") as stream:
        stream.write(provenance)
    print(provenance)


def _apt_sources():
    """The archive lines of the machine's apt sources, for the provenance note."""
    lines = []
    for folder, _, files in os.walk("/etc/apt"):
        for name in files:
            if name.endswith((".list", ".sources")):
                with open(os.path.join(folder, name), errors="replace") as stream:
                    lines += [line for line in stream if re.match(r"\s*(deb |URIs:|Suites:)", line)]
    return lines


if __name__ == "__main__":
    main()
