import taskq as multiprocessing
from dataclasses import dataclass


@dataclass
class Config:
    threshold: int
    multiplier: float


def process_data(args):
    data, config = args
    return [x * config.multiplier for x in data if x > config.threshold]


if __name__ == "__main__":
    config = Config(threshold=5, multiplier=2.0)
    data_chunks = [[1, 2, 6, 8], [3, 5, 9, 10], [7, 11, 12, 4]]
    with multiprocessing.Pool(processes=3) as pool:
        results = pool.map(process_data, [(chunk, config) for chunk in data_chunks])
    print(results)
