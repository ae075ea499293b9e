"""Fetches a standard federation's files into DIR, checking their sha256.

  python scripts/download.py NAME DIR [--mirror URL]

NAME: emnist, shakespeare, stackoverflow (FedJAX's SQLite files, the word
counts for Stack Overflow's vocabulary) or cifar100_tff (TFF's compressed
SQLite, with its published checksum). --mirror fetches each file from
URL/<file name> instead (a local copy or a loopback server). A file whose
publisher gives no checksum has the digest of its first download recorded
beside it, and later checks must match.
"""
import argparse
import sys

from fedround.data.download import DownloadError, download


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('name')
  parser.add_argument('directory')
  parser.add_argument('--mirror', default='')
  args = parser.parse_args()
  try:
    for path in download(args.name, args.directory, args.mirror):
      print(path)
  except DownloadError as e:
    print(f'download error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
