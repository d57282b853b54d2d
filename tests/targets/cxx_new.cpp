// C++ ground truth: operator new/new[]/delete, through libstdc++ (or an allocator's own).
//
//   leak     cxx_leak_objects: 10 x new Widget (40 bytes) + 5 x new char[1000], kept:
//            5400 live in 15 blocks
//   churn    cxx_churn: a vector grown to 1000 ints and a 100-character string, destroyed;
//            50 x new/delete Widget: 0 live
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

struct Widget {
    char data[40];
};

static void *volatile kept[64];
static int kept_count;

__attribute__((noinline)) void cxx_leak_objects()
{
    for (int i = 0; i < 10; i++) {
        Widget *w = new Widget;
        std::memset(w->data, i, sizeof w->data);
        kept[kept_count++] = w;
    }
    for (int i = 0; i < 5; i++) {
        char *buffer = new char[1000];
        std::memset(buffer, i, 1000);
        kept[kept_count++] = buffer;
    }
}

__attribute__((noinline)) void cxx_churn()
{
    std::vector<int> numbers;
    for (int i = 0; i < 1000; i++)
        numbers.push_back(i);
    std::string text(100, 'x');
    kept[63] = numbers.data() + text.size();
    for (int i = 0; i < 50; i++) {
        Widget *volatile w = new Widget;
        delete w;
    }
}

int main()
{
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::printf("ready\n");
    char command[64];
    while (std::fgets(command, sizeof command, stdin)) {
        command[std::strcspn(command, "\n")] = 0;
        if (!std::strcmp(command, "leak"))
            cxx_leak_objects();
        else if (!std::strcmp(command, "churn"))
            cxx_churn();
        else if (!std::strcmp(command, "exit"))
            return 0;
        std::printf("done %s\n", command);
    }
}
