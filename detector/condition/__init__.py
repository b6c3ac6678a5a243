"""Falco's condition language: lexer → parser → AST → binder → compiled closures.

- `lexer`: tokens with their offsets (value mode reads bare values such as `/usr/*`).
- `parser`: text → syntax tree (`ast`), macro and list references left unresolved.
- `binder`: syntax tree → bound tree: macros inlined, lists expanded, fields looked up
  in the registry (`detector.fields`) and values typed; every error names a column.
- `compiler`: bound tree → a closure per event type, with constant folding so an
  event type that cannot match a rule never meets it.
"""
