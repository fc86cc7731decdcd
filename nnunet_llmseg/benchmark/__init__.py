"""``nnunet-llmseg benchmark``: does a semi-supervised trainer beat plain nnU-Net on *my* data, with *my* labels?

One command trains every chosen method on the same fold, labelled subset, schedule and plans through the real
``nnUNetv2_train``, scores nnU-Net's own validation predictions of the fold (Dice, Jaccard, HD95, ASD per case and
class), and compares each method with the labelled-only baseline: mean Dice difference, a paired Wilcoxon
signed-rank test over the validation cases, and the share of the labelled-only -> all-labels gap it closes.

Modules, one idea each:

- :mod:`~nnunet_llmseg.benchmark.methods` - method aliases, finding trainer classes the way nnU-Net does, and the
  generated schedule variants (``{Trainer}_{E}epochs_{I}it``, checkpoint every epoch);
- :mod:`~nnunet_llmseg.benchmark.plans` - CPU-sized plans copies (batch / patch size / width) sharing the
  preprocessed data;
- :mod:`~nnunet_llmseg.benchmark.training_logs` - what nnU-Net's text logs say (pseudo-Dice curve, epoch times,
  the labelled subset a run used) - read as text, nothing unpickled;
- :mod:`~nnunet_llmseg.benchmark.runs` - run states, reuse, continuation with ``--c``, run-info files, locks and
  parallel subprocesses;
- :mod:`~nnunet_llmseg.benchmark.stats` - the paired statistics;
- :mod:`~nnunet_llmseg.benchmark.report` - scoring and the outputs (``results.json``, ``results.md``, plots);
- :mod:`~nnunet_llmseg.benchmark.cli` - the command line.
"""
