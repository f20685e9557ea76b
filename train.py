"""`python train.py --shards tfrecords/`: the repository's script for `dancedata train` (dancedata/train.py).

Kept at the top of the repository for the commands in the README; the package installs nothing but
`dancedata`, so a user's own train.py or models/ never meets this one.
"""
from dancedata import cli
from dancedata.train import INTERRUPTED, main

if __name__ == "__main__":
    cli.exit(cli.run(main, "train.py", interrupted=INTERRUPTED))
