export { governedTask } from './governed-task';
