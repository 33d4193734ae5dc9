import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'models/', 'node_modules/', 'data/', 'artifacts/', 'kiosk/node_modules/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: globals.node },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
    },
  },
  {
    // the capture page and the console's script run in the browser
    files: ['src/capture/page/**/*.js', 'src/console/assets/**/*.js'],
    languageOptions: { globals: globals.browser },
  },
);
