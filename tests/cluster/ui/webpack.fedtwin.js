'use strict'; /* eslint-env node */
// Argo Workflows v4.0.7's own ui/webpack.config.js, unchanged, plus two module-resolution fixes that
// the registry's argo-ui 1.0.0 needs in place of the git commit upstream pins (tests/cluster/README.md,
// "The Argo UI"). tests/cluster/build.py copies this file next to upstream's config and runs webpack
// with it; upstream's file is not edited.
const path = require('path');
const config = require('./webpack.config.js');

// argo-ui 1.0.0's form-field.tsx does `require('uuid/v1')` without declaring uuid; the hoisted uuid
// is 9.x, which has no `v1` file. package.json adds uuid 3.4.0 under the alias `uuid-v3`.
config.resolve.alias = Object.assign({}, config.resolve.alias, {
    'uuid/v1$': path.resolve(__dirname, 'node_modules/uuid-v3/v1.js'),
});

// argo-ui 1.0.0's logs-viewer.scss imports 'node_modules/xterm/dist/xterm', the stylesheet of the
// xterm 2.4.0 its code uses (installed under argo-ui/node_modules); the top-level xterm is the UI's
// 4.x, which keeps its stylesheet in css/. Searching argo-ui's own directory pairs the 2.4.0 code
// with its own stylesheet.
const scss = config.module.rules.find(rule => String(rule.test) === String(/\.scss$/));
if (!scss || !Array.isArray(scss.use) || !scss.use.includes('sass-loader')) {
    throw new Error('webpack.fedtwin.js: upstream webpack.config.js has no scss rule with sass-loader');
}
scss.use = scss.use.map(loader =>
    loader === 'sass-loader'
        ? {loader, options: {sassOptions: {includePaths: [path.resolve(__dirname, 'node_modules/argo-ui')]}}}
        : loader
);

module.exports = config;
