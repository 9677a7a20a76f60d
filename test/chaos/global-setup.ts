// Placeholder until the chaos suite has its own PostgreSQL cluster: the main suite's setup.
export { default } from '../support/global-setup';
