"""Published ``config.json`` files of popular models, shipped so that ``edgellm plan`` answers for
them with no network.  File names are the hub id with ``/`` written as ``--``.  Shapes only: no
weights, no tokenizer.  Also the test suite's fixtures for parameter counts."""
