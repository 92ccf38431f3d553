"""The steps and experiments of scripts/run.sh and scripts/demo.sh: model selection, results, plots, studies."""
