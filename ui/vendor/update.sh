#!/usr/bin/env bash
# Re-creates ui/vendor/ from the npm registry and checks every file against the hashes below.
# To upgrade: change a version, run this, update the hashes it prints, the paths in
# ui/graphiql.html and src/ui.rs, and ui/vendor/README.md. Needs npm (no node_modules kept).
set -euo pipefail
cd "$(dirname "$0")"
GRAPHIQL=4.1.2
REACT=18.3.1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "graphiql@$GRAPHIQL" "react@$REACT" "react-dom@$REACT" >/dev/null)
unpack() { mkdir -p "$work/$1" && tar xzf "$work/$2" -C "$work/$1"; }
unpack graphiql "graphiql-$GRAPHIQL.tgz"
unpack react "react-$REACT.tgz"
unpack react-dom "react-dom-$REACT.tgz"
rm -rf "graphiql-$GRAPHIQL" "react-$REACT" "react-dom-$REACT"
mkdir -p "graphiql-$GRAPHIQL" "react-$REACT" "react-dom-$REACT"
cp "$work/graphiql/package/dist/index.umd.js" "graphiql-$GRAPHIQL/graphiql.min.js"
cp "$work/graphiql/package/dist/style.css" "graphiql-$GRAPHIQL/graphiql.min.css"
cp "$work/graphiql/package/LICENSE" "graphiql-$GRAPHIQL/LICENSE"
cp "$work/react/package/umd/react.production.min.js" "$work/react/package/LICENSE" "react-$REACT/"
cp "$work/react-dom/package/umd/react-dom.production.min.js" "$work/react-dom/package/LICENSE" "react-dom-$REACT/"
sha256sum -c <<SUMS
867226ba8af5ce7949903fc53932f78dac9f4bfc6cc8da0fd3869b8bc6c5256b  graphiql-$GRAPHIQL/graphiql.min.js
30487e07635d312a63f647b140d37740a73c53332b0975bf4b1fe985ca6ec885  graphiql-$GRAPHIQL/graphiql.min.css
d949f1c3687aedadcedac85261865f29b17cd273997e7f6b2bfc53b2f9d4c4dd  react-$REACT/react.production.min.js
35f4f974f4b2bcd44da73963347f8952e341f83909e4498227d4e26b98f66f0d  react-dom-$REACT/react-dom.production.min.js
SUMS
