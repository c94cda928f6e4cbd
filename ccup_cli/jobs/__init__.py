"""Jobs, one module per command: unlearn, finetune, sweep, eval, export, audit. Each reads as its steps."""
