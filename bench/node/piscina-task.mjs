// The trivial task of workload 2 on Piscina: input + 1.
export default function addOne(x) {
  return x + 1;
}
