"""Build the Reuters-21578 R8 (or R52) bag-of-words classification set in svmlight format.

Reads the 22 SGML files of "Reuters-21578, Distribution 1.0" (raw/reut2-000.sgm ... raw/reut2-021.sgm),
checks their sha256 sums, takes the ModApte split (README.txt, section VIII.B: LEWISSPLIT="TRAIN" or
"TEST", TOPICS="YES"), keeps the documents with exactly one TOPICS category and, of those, the 8 classes
of R8 (Cardoso-Cachopo 2007): acq crude earn grain interest money-fx ship trade. With --subset r52 it
keeps every category with at least one such document in both train and test (52 classes).

Text of a document: its TITLE and BODY (the whole TEXT element where it has neither), SGML entities
decoded. Features: counts of lower-cased words matching (?u)\\b[a-z][a-z0-9+-]+\\b (the tokeniser of
tools/debian_text.py), kept when at least --min-df training documents hold them. The vocabulary is
fitted on the training documents only. Class k is the k-th category in sorted order, from 0; features
are numbered from 1 in the files (vocabulary.txt line i is feature i). Nothing is random: the output is a
function of the input files and the arguments.

The SGML files come with the collection (Lewis's distribution, the UCI KDD archive), or from the GitHub
repository kchopra456/Reuters-21578 (commit 85802cb1835ad4aafa2cbae3e7baa99ca0414a7d, the repository's
root); their sums are checked. The collection's README allows free distribution for research purposes
only, and published results must name it "Reuters-21578, Distribution 1.0".

    python tools/reuters_r8.py --raw DIR --out data/reuters-r8
    python tools/reuters_r8.py --raw DIR --subset r52 --out data/r52
"""

import argparse
import collections
import hashlib
import html
import os
import re
import sys

R8 = ("acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade")
TOKEN_PATTERN = r"(?u)\b[a-z][a-z0-9+-]+\b"

#: sha256 of the input files (Reuters-21578 Distribution 1.0 as committed in kchopra456/Reuters-21578).
SHA256 = {
    "reut2-000.sgm": "9ff9bb40624ef992a03f62aace12e697dca1087abfd9b4d06aa787a6ad3e0687",
    "reut2-001.sgm": "1528e7e82d110d88d0234eb9619eadb7f9fd805711971df05975b92277dfdf4d",
    "reut2-002.sgm": "99f18068d0518952987dedd78c622e5c2a584e357d264d3754696c815f3e6628",
    "reut2-003.sgm": "78a3a8d7e04bc9d42c4614d5d5c60a4293dbe3f708df6fb5a71d9ef31f4b3fa3",
    "reut2-004.sgm": "726342c19a65873330b412378cd6a3f0d512035f5223146ddd60930c62eb6ff0",
    "reut2-005.sgm": "d09de619b6dd2d047d5124681f6df90550abaf592020d1c1ce338ae9b91522e7",
    "reut2-006.sgm": "b5535c0d66b01f4976f84621a4a795afbc00d2c4bd0a1b7ae426df6630fb361d",
    "reut2-007.sgm": "aa706007ec84a03537a3921ca976d60e11b3f99e4b9e9b2d5c81dd384d2c2062",
    "reut2-008.sgm": "a3994583694a00b7c744097c1d7eabfcf90f2e6650cc21663e46828035a336cb",
    "reut2-009.sgm": "29995f606dd1a9bdf907eacc9d879846c716860d9d9141676979474aaea39c7d",
    "reut2-010.sgm": "996df6008089bd09fa5b28a4d2eb0ee5f7b9d4601cde566fed3926ac82960fa3",
    "reut2-011.sgm": "d3a2782015247d9c2bffb8926267827fdd449c70d619435ef01a25a1c56a53ca",
    "reut2-012.sgm": "da31035d483851f2aebce5b66d779e5e2c0ac9dcfe098596c6d544e81c5604ab",
    "reut2-013.sgm": "8f7700bc0455fac3fcc12377ced4807b7df8aba1f21ecad059b9cc2b1cf0b8be",
    "reut2-014.sgm": "ef936bd3e0f36cf722afa9a6957563549775af32e9e28b4f539c8737ceda83ab",
    "reut2-015.sgm": "6d3bcec73eff871b8a5403588af814c4e50a0de6bc25707480522ab836f74026",
    "reut2-016.sgm": "be2f03a185fff70131f3b4fdbd6229b7ee2be077eba9691eaa597c8cfbda8812",
    "reut2-017.sgm": "f370e610b4b1342e41a98e0c426a08541044bd1d7e539674f32372a6060b73b5",
    "reut2-018.sgm": "a5f971bf25448e915781962309e669359a35fbcaf3017a806eca0590897f209a",
    "reut2-019.sgm": "d3b07097fba2633d130b4914aceba671645985248943ce9e39c289315339dffb",
    "reut2-020.sgm": "f6ad1b724125c202566c63b35ea0b5ee23881f8b7ed47a32829d5af05d8e860d",
    "reut2-021.sgm": "3f5196d32869723c9042aa5756805b4e90360f1f45ea17f4594fa0e2b3630b18",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", required=True, help="folder holding reut2-0NN.sgm")
    parser.add_argument("--out", required=True, help="folder for train.svm, test.svm, vocabulary.txt")
    parser.add_argument("--subset", choices=("r8", "r52"), default="r8")
    parser.add_argument("--min-df", type=int, default=2, help="keep words held by at least this many train docs")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the inputs")
    return parser.parse_args(argv)


def _element(name, text):
    found = re.search(rf"<{name}[^>]*>(.*?)</{name}>", text, re.S)
    return found.group(1) if found else None


def documents(raw, verify=True):
    """``[(newid, lewissplit, topics_attr, [topics], text)]`` of all 21,578 documents, in file order."""
    docs = []
    for name in sorted(SHA256):
        with open(os.path.join(raw, name), "rb") as stream:
            data = stream.read()
        if verify and hashlib.sha256(data).hexdigest() != SHA256[name]:
            sys.exit(f"error: {name} does not have the expected sha256 (use --no-verify to build anyway)")
        text = data.decode("latin-1")  # reut2-017.sgm holds one byte outside ASCII
        for match in re.finditer(r"<REUTERS([^>]*)>(.*?)</REUTERS>", text, re.S):
            attrs = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            body = match.group(2)
            topics = re.findall(r"<D>(.*?)</D>", _element("TOPICS", body) or "")
            title, main = _element("TITLE", body), _element("BODY", body)
            if title is None and main is None:
                content = _element("TEXT", body) or ""
            else:
                content = (title or "") + "\n" + (main or "")
            docs.append((int(attrs["NEWID"]), attrs["LEWISSPLIT"], attrs["TOPICS"], topics, html.unescape(content)))
    if len(docs) != 21578:
        sys.exit(f"error: found {len(docs)} documents, expected 21578")
    return docs


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    from sklearn.datasets import dump_svmlight_file
    from sklearn.feature_extraction.text import CountVectorizer

    docs = documents(args.raw, verify=not args.no_verify)
    split = {part: [d for d in docs if d[1] == part and d[2] == "YES" and len(d[3]) == 1] for part in ("TRAIN", "TEST")}
    if args.subset == "r8":
        classes = sorted(R8)
    else:
        seen = [set(d[3][0] for d in split[part]) for part in ("TRAIN", "TEST")]
        classes = sorted(seen[0] & seen[1])
    chosen = {part: [d for d in split[part] if d[3][0] in classes] for part in split}
    texts = {part: [d[4] for d in chosen[part]] for part in chosen}
    labels = {part: np.array([classes.index(d[3][0]) for d in chosen[part]]) for part in chosen}

    vectorizer = CountVectorizer(lowercase=True, token_pattern=TOKEN_PATTERN, min_df=args.min_df)
    X_train = vectorizer.fit_transform(texts["TRAIN"])
    X_test = vectorizer.transform(texts["TEST"])
    os.makedirs(args.out, exist_ok=True)
    dump_svmlight_file(X_train, labels["TRAIN"], os.path.join(args.out, "train.svm"), zero_based=False)
    dump_svmlight_file(X_test, labels["TEST"], os.path.join(args.out, "test.svm"), zero_based=False)
    with open(os.path.join(args.out, "vocabulary.txt"), "w") as stream:
        stream.write("\n".join(vectorizer.get_feature_names_out()) + "\n")
    with open(os.path.join(args.out, "ids.txt"), "w") as stream:
        stream.write("# split NEWID label\n")
        for part, name in (("TRAIN", "train"), ("TEST", "test")):
            for d in chosen[part]:
                stream.write(f"{name} {d[0]} {d[3][0]}\n")

    print(f"subset {args.subset}: {len(classes)} classes, {X_train.shape[1]} features (min_df {args.min_df})")
    for part, X in (("TRAIN", X_train), ("TEST", X_test)):
        y = labels[part]
        counts = collections.Counter(y.tolist())
        density = 100 * X.nnz / (X.shape[0] * X.shape[1])
        print(f"{part.lower()}: {X.shape[0]} rows, {X.nnz} nonzeros, density {density:.3f}%, "
              f"{X.nnz / X.shape[0]:.1f} nonzeros/row, empty rows {int((X.getnnz(axis=1) == 0).sum())}")
        print("  " + ", ".join(f"{k}={c} {counts.get(k, 0)}" for k, c in enumerate(classes)))


if __name__ == "__main__":
    main()
