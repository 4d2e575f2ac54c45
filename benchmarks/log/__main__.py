"""``python -m benchmarks.log``: the Kafka protocol benchmark (see :mod:`benchmarks.log.kafka`)."""

from benchmarks.log.kafka import main

if __name__ == "__main__":
    main()
